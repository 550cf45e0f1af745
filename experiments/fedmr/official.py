"""FedAvg and FedMR at the FedMR paper's own setting (``official.json``: Fashion-MNIST, the
official ``CNNFashionMnist`` shape with PyTorch's default initialization, 100 clients of a
capped Dirichlet(alpha) split with full client data, 10 a round, 5 local epochs of batch 50,
SGD lr 0.01 momentum 0.5, global test set only, 100 rounds, evaluation every 10).

Runs finished in ``--runs`` with the same config are read back, not rerun. Each run's metrics
go to ``results/official/<algorithm>_alpha<a>_seed<s>.jsonl`` (committed); the summary is
computed from those files only: per alpha and method, global test accuracy at rounds 20, 50
and 100 and the mean of the last 3 evaluations (rounds 80-100), mean ± sample std (n seeds),
the change of that mean against the 3 evaluations before (rounds 50-70: "flat" when under 0.5
points), seconds per training round; and the paired FedMR - FedAvg difference per seed (95%
t-interval). Writes ``summary.md`` and ``accuracy.png``.

``--rounds 500`` runs the same setting to the official code's default of 500 rounds
(checkpointed every 10, so an interrupted run resumes) into ``results/official_500rounds/``:
accuracy at rounds 100, 200, 300 and 500, the last 3 evaluations, and their change over the
last 30% of rounds (against the 3 evaluations ending at round 350; at 100 rounds that is the
rounds 50-70 above).

  python experiments/fedmr/official.py                  # 12 runs, about 3 h on 2 CPU cores
  python experiments/fedmr/official.py --alphas 0.1 --seeds 0
  python experiments/fedmr/official.py --summarize      # the tables from results/official/
  python experiments/fedmr/official.py --rounds 500 --alphas 0.1 --seeds 0 1 2 3 4
                                                        # 10 runs, 25-37 min each alone
"""

from __future__ import annotations

import argparse
import pathlib
import statistics

import numpy as np

from fedjax_lab import grid
from fedjax_lab.stats import format_paired, format_spread
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results" / "official"
RESULTS_BY_ROUNDS = {100: RESULTS, 500: HERE / "results" / "official_500rounds"}
ALGORITHMS = ("fedavg", "fedmr")
FLAT_POINTS = 0.5


def run_all(args) -> None:
  grid.run_alpha_seed_grid(
    args.config,
    {name: (name, {}) for name in args.algorithms},
    args.alphas,
    args.seeds,
    args.runs if args.rounds == 100 else f"{args.runs}_{args.rounds}rounds",
    RESULTS_BY_ROUNDS[args.rounds],
    report=lambda metrics: f"accuracy at round {args.rounds} {_accuracy(metrics)[-1]:.2f}",
    overrides=[f"rounds={args.rounds}"],
  )


def _accuracy(metrics: list[dict]) -> list[float]:
  return [100 * r["global_accuracy"] for r in metrics if "global_accuracy" in r]


def _at(metrics: list[dict], round_index: int) -> float:
  return next(100 * r["global_accuracy"] for r in metrics if r["round"] == round_index)


def _last_3(metrics: list[dict]) -> float:
  return float(np.mean(_accuracy(metrics)[-3:]))


def measures(rounds: int) -> dict:
  """The columns of a ``rounds`` budget: accuracy at named rounds and of the last 3 evals."""
  named = (20, 50, 100) if rounds == 100 else (100, 200, 300, rounds)
  at = {f"round {r}": (lambda m, r=r: _at(m, r)) for r in named}
  return {**at, "last 3 evals": _last_3}


def _earlier_3(metrics: list[dict]) -> float:
  """The mean of the 3 evaluations ending at round 0.7 x the run's last round."""
  last = max(r["round"] for r in metrics)
  upto = [100 * r["global_accuracy"] for r in metrics
          if "global_accuracy" in r and r["round"] <= 0.7 * last]  # fmt: skip
  return float(np.mean(upto[-3:]))


def summary_tables(runs) -> str:
  """The accuracy table and the paired FedMR - FedAvg table of the module docstring."""
  rounds = max(r["round"] for by_seed in runs.values() for m in by_seed.values() for r in m)
  window = f"rounds {round(0.7 * rounds) - 20}-{round(0.7 * rounds)}"
  measures_ = measures(rounds)
  rows, paired = [], []
  for alpha in sorted({a for a, _ in runs}):
    for name in ALGORITHMS:
      by_seed = runs.get((alpha, name), {})
      if not by_seed:
        continue
      seconds = [r["round_seconds"] for m in by_seed.values() for r in m]
      change = [_last_3(m) - _earlier_3(m) for m in by_seed.values()]
      rows.append(
        {
          "alpha": f"{alpha:g}",
          "method": name,
          **{k: format_spread([f(m) for m in by_seed.values()]) for k, f in measures_.items()},
          f"change vs {window}": f"{np.mean(change):+.2f}"
          + (" flat" if abs(np.mean(change)) < FLAT_POINTS else ""),
          "s / training round": f"{statistics.mean(seconds):.2f}",
        }
      )
    fedavg, fedmr = runs.get((alpha, "fedavg"), {}), runs.get((alpha, "fedmr"), {})
    seeds = sorted(set(fedavg) & set(fedmr))
    if len(seeds) >= 2:
      row = {"alpha": f"{alpha:g}", "seeds": len(seeds)}
      for k, f in measures_.items():
        row[k] = format_paired([f(fedmr[s]) for s in seeds], [f(fedavg[s]) for s in seeds])
      paired.append(row)
  out = "global test accuracy (%)\n\n```\n" + format_table(rows, list(rows[0])) + "\n```\n"
  if paired:
    out += "\nFedMR - FedAvg, paired by seed (points, 95% t-interval)\n\n```\n"
    out += format_table(paired, list(paired[0])) + "\n```\n"
  return out


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
  parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
  parser.add_argument("--config", default=str(HERE / "official.json"))
  parser.add_argument("--runs", default="runs/fedmr_official")
  parser.add_argument("--rounds", type=int, choices=sorted(RESULTS_BY_ROUNDS), default=100)
  parser.add_argument("--summarize", action="store_true", help="the tables from results/ only")
  args = parser.parse_args()
  results = RESULTS_BY_ROUNDS[args.rounds]
  results.mkdir(parents=True, exist_ok=True)
  if not args.summarize:
    run_all(args)
  tables = grid.summarize_run_metrics(
    results, summary_tables, ALGORITHMS,
    lambda alpha: f"official code's model and schedule, alpha={alpha:g}, {args.rounds} rounds",
  )  # fmt: skip
  print(tables)


if __name__ == "__main__":
  main()
