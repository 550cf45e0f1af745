"""Settings for experiments/worldlm, tuned away from the reported benchmark: on another draw of
documents (``data.seed=99``) and another training seed (99), for 100 rounds.

- ``--what learning_rate``: FedAvg and WorldLM at each rate; the rate with the lowest mean
  perplexity of the two at the last evaluation is the one ``base.json`` uses
  (``results/tuning.jsonl``).
- ``--what temperature``: WorldLM at ``base.json``'s rate, each attention temperature ``T``
  against each exchange temperature ``T_x`` (0: no exchange across federations)
  (``results/tuning_temperature.jsonl``).

  python experiments/worldlm/tune.py                        # about 10 min on 2 CPU cores
  python experiments/worldlm/tune.py --what temperature     # about 10 min
"""

from __future__ import annotations

import argparse
import json
import pathlib

from fedjax_lab import grid, load_config

HERE = pathlib.Path(__file__).parent
RATES = (0.001, 0.003, 0.01)
TEMPERATURES = (0.05, 0.5)
EXCHANGE_TEMPERATURES = (0.0, 0.05, 0.5)
TUNING_DRAW = ["data.seed=99", "seed=99", "rounds=100"]


def candidates(what: str) -> list[tuple[str, dict, list[str]]]:
  """``(run name, record fields, config overrides)`` of every run that tunes ``what``."""
  if what == "learning_rate":
    return [
      (
        f"{variant}_lr{rate}",
        {"learning_rate": rate, "variant": variant},
        [f"local.learning_rate={rate}", f"algorithm.worldlm.variant={variant}"],
      )
      for rate in RATES
      for variant in ("fedavg", "worldlm")
    ]
  return [
    (
      f"T{t}_Tx{tx}",
      {"temperature": t, "cross_temperature": tx},
      [f"algorithm.worldlm.temperature={t}", f"algorithm.worldlm.cross_temperature={tx}"],
    )
    for t in TEMPERATURES
    for tx in EXCHANGE_TEMPERATURES
  ]


def temperature_table(records: list[dict]) -> str:
  """The README's grid of perplexity at round 100: attention temperature T (rows) against
  exchange temperature T_x (columns)."""
  rows = sorted({r["temperature"] for r in records})
  columns = sorted({r["cross_temperature"] for r in records})
  cell = {(r["temperature"], r["cross_temperature"]): r["perplexity"] for r in records}
  lines = [
    "| T \\ T_x | " + " | ".join(f"{c:g}" for c in columns) + " |",
    "|---|" + "---|" * len(columns),
  ]
  for t in rows:
    lines.append(f"| {t:g} | " + " | ".join(f"{cell[(t, c)]:.3f}" for c in columns) + " |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--what", choices=["learning_rate", "temperature"], default="learning_rate")
  args = parser.parse_args()
  records = []
  for name, fields, overrides in candidates(args.what):
    config = load_config(
      str(HERE / "base.json"),
      TUNING_DRAW + overrides + [f"out_dir=runs/worldlm_tune/{name}"],
    )
    metrics, _ = grid.run_or_load(config, None)
    record = {
      **fields,
      "perplexity": grid.last_evaluations(metrics, "client_perplexity", count=1),
    }
    records.append(record)
    print(json.dumps(record), flush=True)
  out = "tuning.jsonl" if args.what == "learning_rate" else "tuning_temperature.jsonl"
  (HERE / "results").mkdir(exist_ok=True)
  (HERE / "results" / out).write_text("".join(json.dumps(r) + "\n" for r in records))
  if args.what == "temperature":
    print(temperature_table(records))


if __name__ == "__main__":
  main()
