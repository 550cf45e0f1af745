"""Reduced-scale FedSND reproduction, offline: Fashion-MNIST, a small CNN (conv5x5 8 - pool -
conv5x5 16 - pool - fc 64), 50 clients of at most 200 examples, 10 per round, Dirichlet(alpha)
label skew. FedSND and its two ablations against FedAvg, FedProx and SCAFFOLD over seeds.

Reports the final global accuracy (mean of the last 3 evaluations) and the rounds to reach a
target accuracy (the paper's communication-efficiency claim): the target is
``--target_fraction`` (default 0.95) of FedAvg's final accuracy at that alpha, and a run's
rounds-to-target is its first evaluation at or above it (missing if never).

  python experiments/fedsnd/reproduce.py
  python experiments/fedsnd/reproduce.py --alphas 0.1 --seeds 0 --set rounds=10

A run whose metrics already hold every round is read back instead of rerun.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

from fedjax_lab import grid, load_config
from fedjax_lab.plots import plot_curves
from fedjax_lab.stats import describe

HERE = pathlib.Path(__file__).parent


# variant -> (registered method, its options changed from the config's)
ALGORITHMS = {
  "fedavg": ("fedavg", {}),
  "fedprox": ("fedprox", {}),
  "scaffold": ("scaffold", {}),
  "fedsnd": ("fedsnd", {}),
  "self_distillation_only": ("fedsnd", {"noise_distill": False}),
  "noise_distillation_only": ("fedsnd", {"self_distill_weight": 0.0}),
  "self_distillation_previous_teacher": ("fedsnd", {"noise_distill": False, "teacher": "previous"}),
  "self_distillation_dropout_teacher": ("fedsnd", {"noise_distill": False, "teacher": "dropout"}),
  "moon": ("moon", {}),
  "feddf": ("feddf", {}),
  "fedgen": ("fedgen", {}),
}
DEFAULT_ALGORITHMS = list(ALGORITHMS)[:6]  # the teacher comparison is run on request


def rounds_to_target(metrics: list[dict], target: float) -> float:
  """The first evaluated round with global accuracy >= ``target`` (NaN if none or if the
  run diverged)."""
  if grid.diverged(metrics):
    return float("nan")
  hits = [m["round"] for m in metrics if m.get("global_accuracy", -1.0) >= target]
  return float(hits[0]) if hits else float("nan")


NAMES = {
  "fedavg": "FedAvg",
  "fedprox": "FedProx",
  "scaffold": "SCAFFOLD",
  "fedsnd": "**FedSND**",
  "self_distillation_only": "self-distillation only",
  "noise_distillation_only": "noise distillation only",
  "self_distillation_previous_teacher": "self-distillation, previous-model teacher",
}


def _accuracy(row: dict, digits: int) -> str:
  """``mean ± sample std`` over the seeds that finished, naming their count when some
  diverged."""
  finished = row["seeds"] - row["diverged"]
  if finished == 1:
    return f"{row['acc_mean']:.{digits}f} (1 seed)"
  text = f"{row['acc_mean']:.{digits}f} ± {row['acc_std']:.{digits}f}"
  return text + (f" ({finished} seeds)" if row["diverged"] else "")


def image_table(summaries: list[dict]) -> str:
  """The README's 30-round image table from the grids' ``summary.json`` files (one per alpha)."""
  lines = [
    "| alpha | algorithm | accuracy (mean ± std, ddof=1) | rounds to target | reached | diverged "
    "| s/round |",
    "|---|---|---|---|---|---|---|",
  ]
  for summary in summaries:
    for row in summary["rows"]:
      accuracy = _accuracy(row, 3)
      if row["algorithm"] == "fedsnd":
        accuracy = f"**{accuracy}**"
      lines.append(
        f"| {row['alpha']} | {NAMES[row['algorithm']]} | {accuracy} | "
        f"{row['rounds_to_target']:.1f} | {row['reached']}/{row['seeds']} | {row['diverged']} | "
        f"{row['round_seconds']:.2f} |"
      )
  return "\n".join(lines)


def text_table(summary: dict) -> str:
  """The README's 30-round text table from its ``summary.json``."""
  target = summary["rows"][0]["target"]
  lines = [
    f"| algorithm | accuracy (mean ± std ddof=1, 3 seeds) | rounds to target ({target:.3f}) |",
    "|---|---|---|",
  ]
  for row in summary["rows"]:
    name = NAMES[row["algorithm"]].strip("*")
    lines.append(f"| {name} | {_accuracy(row, 4)} | {row['rounds_to_target']:.1f} |")
  return "\n".join(lines)


TEXT_ABLATION = {  # ablation.sh's runs: file name -> the change from text.json
  "weak_self_distillation": "lambda 0.3",
  "strong_server_distillation": "20 distill steps, lr 0.05",
  "more_noise_steps": "50 noise steps",
  "ensemble_teacher": "ensemble teacher",
  "fresh_noise_each_round": "fresh noise every round (not adaptive)",
}


def text_ablation_table(text: dict, changes: dict[str, dict]) -> str:
  """The README's text ablation: FedSND's accuracy under each change (``changes``: the
  summaries ``ablation.sh`` saved, by file name) beside the defaults (the text grid's
  ``text`` summary), with FedAvg's of each run for reference."""
  row = lambda summary, name: next(r for r in summary["rows"] if r["algorithm"] == name)
  lines = [
    "| change from text.json | FedSND accuracy | FedAvg accuracy (same seeds) |",
    "|---|---|---|",
    "| defaults (lambda 1, 10 noise steps, 5 distill steps lr 0.01, pairwise, adaptive) | "
    f"{_accuracy(row(text, 'fedsnd'), 4)} | {_accuracy(row(text, 'fedavg'), 4)} |",
  ]
  for name, label in TEXT_ABLATION.items():
    summary = changes[name]
    lines.append(
      f"| {label} | {_accuracy(row(summary, 'fedsnd'), 4)} | "
      f"{_accuracy(row(summary, 'fedavg'), 4)} |"
    )
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--algorithms", nargs="+", default=DEFAULT_ALGORITHMS, choices=ALGORITHMS)
  parser.add_argument("--target_fraction", type=float, default=0.95)
  parser.add_argument("--config", default=str(HERE / "reduced.json"))
  parser.add_argument(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    metavar="SECTION.FIELD=VALUE",
    help="override the config (repeatable)",
  )
  args = parser.parse_args()
  base = load_config(args.config, args.overrides)
  out_root = pathlib.Path(base.out_dir)
  started = time.perf_counter()
  variants = {name: ALGORITHMS[name] for name in args.algorithms}
  curves, loaded = grid.alpha_seed_curves(
    args.config, args.overrides, variants, args.alphas, args.seeds, out_root
  )
  rows = []
  for alpha in args.alphas:
    reference = args.algorithms[0]
    target = (
      args.target_fraction
      * describe([grid.last_evaluations(m, "global_accuracy") for m in curves[(alpha, reference)]])[
        "mean"
      ]
    )
    for name in args.algorithms:
      runs = curves[(alpha, name)]
      finals = describe([grid.last_evaluations(m, "global_accuracy") for m in runs])
      reached = [rounds_to_target(m, target) for m in runs]
      rows.append(
        {
          "alpha": alpha,
          "algorithm": name,
          "acc_mean": finals["mean"],
          "acc_std": finals["std"],
          "target": float(target),
          "rounds_to_target": float(np.nanmean(reached))
          if any(np.isfinite(reached))
          else float("nan"),
          "reached": int(np.isfinite(reached).sum()),
          "seeds": len(runs),
          "diverged": sum(grid.diverged(m) for m in runs),
          "round_seconds": float(
            np.mean([r["round_seconds"] for m in runs for r in m[1:] if "round_seconds" in r])
          ),
        }
      )
  env = {**grid.environment(started, loaded, base), "std": "sample (ddof=1)"}
  env["target"] = f"{args.target_fraction} x final accuracy of {args.algorithms[0]}"
  table = grid.write_results_table(
    out_root,
    rows,
    [
      "alpha",
      "algorithm",
      "acc_mean",
      "acc_std",
      "target",
      "rounds_to_target",
      "reached",
      "seeds",
      "diverged",
      "round_seconds",
    ],
    env,
  )
  title = lambda alpha: f"alpha = {alpha}"
  panels = grid.curve_panels(curves, args.alphas, args.algorithms, "global_accuracy", title)
  plot_curves(panels, out_root / "accuracy.png", "global accuracy")
  print(table)
  print(
    f"wall time {env['wall_seconds']} s; wrote {out_root}/summary.md, summary.json, accuracy.png"
  )


if __name__ == "__main__":
  main()
