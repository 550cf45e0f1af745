"""``fedjax-lab``: run an experiment from a config file with dotted overrides.

fedjax-lab --config experiments/quickstart.json rounds=50 data.alpha=0.1
fedjax-lab --config runs/x/config.json --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import pathlib
import sys

from fedjax_lab.build import resolve_execution
from fedjax_lab.config import load_config
from fedjax_lab.run import TrainingDivergedError, run
from fedjax_lab.tables import SUMMARY_COLUMNS, format_table, summary_row


def load_plugin(spec: str) -> None:
  """Import a module by dotted name or a ``.py`` file by path; a plugin registers its methods,
  aggregators, sources or models when imported (README, "Writing a new algorithm")."""
  if spec.endswith(".py"):
    path = pathlib.Path(spec).resolve()
    loaded = sys.modules.get(path.stem)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
      return  # already imported (and registered) in this process
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    if module_spec is None or not path.exists():
      raise FileNotFoundError(f"--plugin {spec}: no such file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[path.stem] = module
    module_spec.loader.exec_module(module)
  else:
    importlib.import_module(spec)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="fedjax-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--config", help="a .json or .toml experiment config")
  parser.add_argument(
    "--plugin",
    action="append",
    default=[],
    help="a module or .py file to import first (it may register algorithms, "
    "aggregators, sources, partitioners or models); repeatable",
  )
  parser.add_argument(
    "--resume", action="store_true", help="continue from the latest checkpoint in out_dir"
  )
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument(
    "--print-config",
    action="store_true",
    help="print the resolved config, with what `auto` picked, and exit",
  )
  parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. local.epochs=2")
  args = parser.parse_args(argv)
  try:
    for plugin in args.plugin:
      load_plugin(plugin)
    config = load_config(args.config, args.overrides)
  except (ValueError, OSError, ImportError) as error:
    print(f"fedjax-lab: config error: {error}", file=sys.stderr)
    return 2
  if args.print_config:
    resolved = dataclasses.asdict(resolve_execution(config))
    print(json.dumps({**config.to_dict(), "resolved_execution": resolved}, indent=2))
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
