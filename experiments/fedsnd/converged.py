"""FedSND and its two ablations against FedAvg, MOON and FedDF (FedProx and SCAFFOLD on
request) run to 100 rounds, 5 seeds, on the reduced image setting (``converged.json``:
``reduced.json`` with 100 rounds instead of 30); ``--rounds 300`` runs the same setting to 300
rounds (checkpointed every 25, so an interrupted run resumes) into ``results/rounds300/``.

Runs finished in ``--runs`` with the same config are read back, not rerun. Each run's metrics
go to ``results/<setting>/<variant>_alpha<a>_seed<s>.jsonl`` (committed); the tables are
computed from those files only, per alpha and variant (global test accuracy, %):

- final: the mean of the last 3 evaluations (rounds 90-100 of 100), mean ± sample std (n seeds);
- round 30: the accuracy at the old 30-round budget;
- flat: the mean over the last 10% of rounds (evaluations at 95 and 100 of 100) minus the mean
  over the 10% before (85 and 90), averaged over seeds; converged when under 0.5 points
  (docs/reproducing.md);
- rounds to target: the first evaluation at or above ``TARGETS[alpha]`` (70% at alpha 0.1,
  78% at 0.5), fixed before these
  runs (just above FedAvg's 30-round accuracy in the older runs: 0.684 at alpha 0.1, 0.763 at
  0.5), mean over the seeds that reached it, and how many did;
- the paired difference by seed (95% t-interval) of every variant against FedAvg, and of
  FedSND against every other variant (final accuracy and round 30).

  python experiments/fedsnd/converged.py --alphas 0.1        # 6 variants x 5 seeds, ~1 h
  python experiments/fedsnd/converged.py --alphas 0.5        # 4 variants x 5 seeds, ~40 min
  python experiments/fedsnd/converged.py --alphas 0.1 --variants fedprox scaffold
  python experiments/fedsnd/converged.py --rounds 300 --alphas 0.1 --variants fedavg fedsnd
  python experiments/fedsnd/converged.py --summarize         # the tables from results/ only
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
RESULTS = HERE / "results" / "converged"
RESULTS_BY_ROUNDS = {100: RESULTS, 300: HERE / "results" / "rounds300"}
CHECKPOINT_EVERY = 25
TARGETS = {0.1: 0.70, 0.5: 0.78}
VARIANTS = [  # table order
  "fedavg",
  "fedprox",
  "scaffold",
  "moon",
  "feddf",
  "fedgen",
  "fedsnd",
  "self_distillation_only",
  "noise_distillation_only",
  "self_distillation_dropout_teacher",
]
DEFAULT_RUNS = {  # FedProx, SCAFFOLD and the dropout teacher on request (--variants): time
  0.1: ["fedavg", "moon", "feddf", "fedsnd", "self_distillation_only", "noise_distillation_only"],
  0.5: ["fedavg", "moon", "feddf", "fedsnd"],
}
ABLATIONS = ("self_distillation_only", "noise_distillation_only")
FLAT_POINTS = 0.5


def run_all(args) -> None:
  from reproduce import ALGORITHMS  # the variants of the 30-round grid

  overrides = [f"rounds={args.rounds}", f"checkpoint_every={CHECKPOINT_EVERY}"]
  for alpha in args.alphas:
    grid.run_alpha_seed_grid(
      args.config,
      {name: ALGORITHMS[name] for name in args.variants or DEFAULT_RUNS[alpha]},
      [alpha],
      args.seeds,
      args.runs or f"runs/fedsnd_{RESULTS_BY_ROUNDS[args.rounds].name}",
      RESULTS_BY_ROUNDS[args.rounds],
      report=lambda metrics: f"final {_final(metrics):.2f}",
      overrides=overrides if args.rounds != 100 else [],
    )


def _accuracy(metrics: list[dict]) -> list[float]:
  """Global test accuracy (%) at each evaluation; [] for a diverged run."""
  if grid.diverged(metrics):
    return []
  return [100 * r["global_accuracy"] for r in metrics if "global_accuracy" in r]


def _final(metrics: list[dict]) -> float:
  values = _accuracy(metrics)
  return float(np.mean(values[-3:])) if values else float("nan")


def _at_round_30(metrics: list[dict]) -> float:
  hits = [
    100 * r["global_accuracy"] for r in metrics if r["round"] == 30 and "global_accuracy" in r
  ]
  return hits[0] if hits else float("nan")


def _last_tenth_change(metrics: list[dict]) -> float:
  """Mean accuracy over evaluations in the last 10% of rounds minus the 10% before."""
  if grid.diverged(metrics):
    return float("nan")
  evals = [(r["round"], 100 * r["global_accuracy"]) for r in metrics if "global_accuracy" in r]
  rounds = evals[-1][0] if evals else 0
  last = [a for t, a in evals if t > 0.9 * rounds]
  before = [a for t, a in evals if 0.8 * rounds < t <= 0.9 * rounds]
  return float(np.mean(last) - np.mean(before)) if last and before else float("nan")


def _final_rounds(runs) -> tuple[int, int]:
  """(first, last) round of the evaluations ``_final`` averages, from any run."""
  metrics = next(iter(next(iter(runs.values())).values()))
  evals = [r["round"] for r in metrics if "global_accuracy" in r]
  return evals[-3], evals[-1]


def _rounds_to_target(metrics: list[dict], target: float) -> float:
  if grid.diverged(metrics):
    return float("nan")
  hits = [r["round"] for r in metrics if r.get("global_accuracy", -1.0) >= target]
  return float(hits[0]) if hits else float("nan")


def summary_tables(runs) -> str:
  """The accuracy table and the paired tables of the module docstring, as markdown."""
  rows, paired = [], []
  first, last = _final_rounds(runs)
  for alpha in sorted({a for a, _ in runs}):
    names = [n for n in VARIANTS if (alpha, n) in runs]
    for name in names:
      by_seed = runs[(alpha, name)]
      reached = [_rounds_to_target(m, TARGETS[alpha]) for m in by_seed.values()]
      change = np.nanmean([_last_tenth_change(m) for m in by_seed.values()] or [np.nan])
      seconds = [
        r["round_seconds"] for m in by_seed.values() for r in m[1:] if "round_seconds" in r
      ]
      rows.append(
        {
          "alpha": f"{alpha:g}",
          "variant": name,
          f"final (rounds {first}-{last})": format_spread([_final(m) for m in by_seed.values()]),
          "round 30": format_spread([_at_round_30(m) for m in by_seed.values()]),
          "last 10% change": f"{change:+.2f}" + (" flat" if abs(change) < FLAT_POINTS else ""),
          "rounds to target": (
            f"{np.nanmean(reached):.0f}" if np.isfinite(reached).any() else "never"
          )
          + f" ({int(np.isfinite(reached).sum())}/{len(reached)})",
          "s / round": f"{statistics.mean(seconds):.2f}" if seconds else "",
        }
      )
    comparisons = [(n, "fedavg") for n in names if n != "fedavg"]
    if "fedsnd" in names:
      others = [n for n in names if n not in ("fedavg", "fedsnd")]
      comparisons += [("fedsnd", n) for n in others if n not in ABLATIONS]
      comparisons += [("fedsnd", n) for n in others if n in ABLATIONS]
    for a, b in comparisons:
      seeds = sorted(set(runs[(alpha, a)]) & set(runs.get((alpha, b), {})))
      if len(seeds) < 2:
        continue
      run_a, run_b = runs[(alpha, a)], runs[(alpha, b)]
      paired.append(
        {
          "alpha": f"{alpha:g}",
          "difference": f"{a} - {b}",
          "seeds": len(seeds),
          "final": format_paired(
            [_final(run_a[s]) for s in seeds], [_final(run_b[s]) for s in seeds]
          ),
          "round 30": format_paired(
            [_at_round_30(run_a[s]) for s in seeds], [_at_round_30(run_b[s]) for s in seeds]
          ),
        }
      )
  out = f"Global test accuracy (%), {last} rounds\n\n```\n"
  out += format_table(rows, list(rows[0])) + "\n```\n"
  if paired:
    out += "\nPaired by seed (points, 95% t-interval)\n\n```\n"
    out += format_table(paired, list(paired[0])) + "\n```\n"
  return out


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--alphas", type=float, nargs="+", default=sorted(DEFAULT_RUNS))
  parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="default: DEFAULT_RUNS")
  parser.add_argument("--config", default=str(HERE / "converged.json"))
  parser.add_argument("--rounds", type=int, choices=sorted(RESULTS_BY_ROUNDS), default=100)
  parser.add_argument("--runs", help="default: runs/fedsnd_<results folder>")
  parser.add_argument("--summarize", action="store_true", help="the tables from results/ only")
  args = parser.parse_args()
  results = RESULTS_BY_ROUNDS[args.rounds]
  results.mkdir(parents=True, exist_ok=True)
  if not args.summarize:
    run_all(args)
  tables = grid.summarize_run_metrics(
    results, summary_tables, VARIANTS, lambda alpha: f"reduced image setting, alpha={alpha:g}"
  )
  print(tables)


if __name__ == "__main__":
  main()
