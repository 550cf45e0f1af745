"""``fedjax-lab``: run an experiment from a config file with dotted overrides.

  fedjax-lab --config experiments/quickstart.json rounds=50 data.alpha=0.1
  fedjax-lab --config runs/x/config.json --resume
"""
from __future__ import annotations

import argparse
import json
import sys

from fedjax_lab.config import load_config
from fedjax_lab.run import TrainingDivergedError, run


def format_table(rows: list[dict], columns: list[str]) -> str:
  """A plain-text table; floats with 4 decimals."""
  cells = [[f"{row.get(c, float('nan')):.4f}" if isinstance(row.get(c), float)
            else str(row.get(c, "")) for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
  line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def summary_row(name: str, result) -> dict:
  """Final metrics of a run, for the results table."""
  last = [r for r in result.metrics if "client_accuracy_mean" in r][-1]
  return {"run": name, "rounds": last["round"],
          "global_acc": last.get("global_accuracy", float("nan")),
          "client_acc_mean": last["client_accuracy_mean"],
          "client_acc_p10": last["client_accuracy_p10"],
          "MB_sent": sum(r["bytes_up"] + r["bytes_down"] for r in result.metrics) / 1e6,
          "seconds": result.wall_seconds}


SUMMARY_COLUMNS = ["run", "rounds", "global_acc", "client_acc_mean", "client_acc_p10", "MB_sent",
                   "seconds"]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="fedjax-lab", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", help="a .json or .toml experiment config")
  parser.add_argument("--resume", action="store_true",
                      help="continue from the latest checkpoint in out_dir")
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument("--print-config", action="store_true",
                      help="print the resolved config and exit")
  parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. local.epochs=2")
  args = parser.parse_args(argv)
  try:
    config = load_config(args.config, args.overrides)
  except (ValueError, OSError) as error:
    print(f"fedjax-lab: config error: {error}", file=sys.stderr)
    return 2
  if args.print_config:
    print(json.dumps(config.to_dict(), indent=2))
    return 0
  try:
    result = run(config, resume=args.resume, progress=not args.no_progress)
  except (ValueError, FileNotFoundError, TrainingDivergedError) as error:
    print(f"fedjax-lab: {type(error).__name__}: {error}", file=sys.stderr)
    return 1
  print(format_table([summary_row(config.algorithm.name, result)], SUMMARY_COLUMNS))
  print(f"metrics, config and plot in {result.out_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
