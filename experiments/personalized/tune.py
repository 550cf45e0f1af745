"""The personalized baselines' own hyperparameters, tuned away from the reported benchmarks:
on pFedLIA's ``rotated`` benchmark built from data seed 100 (the reported runs use seeds 0-4),
the same budget for every method with a setting of its own: 3 candidates, one run each at the
benchmark's 30 rounds. The candidate with the highest clients' mean personalized accuracy
(mean of the last 3 evaluations; for Per-FedAvg after one epoch of local adaptation) is what
``reproduce.py`` gives the method. The local optimizer, learning rate, epochs and batch size
are ``reduced.json``'s, shared by every method and not tuned per method; FedPer, LG-FedAvg and
FedAvg-FT have no setting of their own.

  python experiments/personalized/tune.py               # 18 runs, about 15 min on 2 cores
  python experiments/personalized/tune.py --summarize   # the table from results/tuning/
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from fedjax_lab import grid
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent
PFEDLIA = HERE.parent / "pfedlia"
RESULTS = HERE / "results" / "tuning"
BENCHMARK = json.loads((PFEDLIA / "benchmarks.json").read_text())["rotated"]
TUNING_SEEDS = [100]
GRID = {  # method -> (option, candidates)
  "ditto": ("lam", (0.01, 0.1, 1.0)),
  "fedrep": ("head_epochs", (1, 2, 5)),
  "apfl": ("alpha_learning_rate", (0.0003, 0.001, 0.003)),
  "pfedme": ("lam", (1.0, 5.0, 15.0)),
  "per_fedavg": ("inner_learning_rate", (0.005, 0.02, 0.05)),
  "fedala": ("learning_rate", (0.1, 1.0, 10.0)),
}
ADAPTED = {"per_fedavg"}  # evaluated after local adaptation (eval_finetune_epochs=1)
CANDIDATES = {
  f"{method} {option}={value:g}": [
    f"algorithm.name={method}",
    f"algorithm.{method}.{option}={value}",
  ]
  + (["eval_finetune_epochs=1"] if method in ADAPTED else [])
  for method, (option, values) in GRID.items()
  for value in values
}
METRICS = {
  "accuracy": ("client_accuracy_mean", 3),
  "adapted_accuracy": ("adapted_client_accuracy_mean", 3),
}


def chosen(records: list[dict]) -> dict[str, str]:
  """``method -> "option=value"``: the candidate with the highest mean accuracy per method."""
  best = {}
  for method in GRID:
    rows = [r for r in records if r["candidate"].split(" ")[0] == method]
    key = "adapted_accuracy" if method in ADAPTED else "accuracy"
    means = {}
    for row in rows:
      means.setdefault(row["candidate"], []).append(row[key])
    if means:
      name = max(means, key=lambda c: np.mean(means[c]))
      best[method] = name.split(" ", 1)[1]
  return best


def tuning_table(records: list[dict]) -> str:
  """Per candidate: the selection accuracy (%), seeds, and ``*`` on each method's choice."""
  picks = chosen(records)
  rows = []
  for candidate in dict.fromkeys(r["candidate"] for r in records):
    method, setting = candidate.split(" ", 1)
    key = "adapted_accuracy" if method in ADAPTED else "accuracy"
    values = [r[key] for r in records if r["candidate"] == candidate]
    accuracy = f"{100 * np.mean(values):.2f}"
    mark = "*" if picks.get(method) == setting else ""
    rows.append({"method": method, "setting": setting, "accuracy %": accuracy,
                 "seeds": len(values), "chosen": mark})  # fmt: skip
  return format_table(rows, list(rows[0]))


def main() -> None:
  grid.tuning_main(__doc__, PFEDLIA / "reduced.json", "runs/personalized_tuning", RESULTS,
                   BENCHMARK, CANDIDATES, TUNING_SEEDS, METRICS, tuning_table)  # fmt: skip


if __name__ == "__main__":
  main()
