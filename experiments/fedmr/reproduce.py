"""Reduced-scale FedMR reproduction, offline: Fashion-MNIST, 100 clients, 10 per round,
MOON-style capped Dirichlet(alpha) label skew; FedMR against FedAvg, FedProx and SCAFFOLD over
several seeds, with the FEMNIST-style CNN (``reduced.json``) or the MLP (``mlp.json``). Writes
every run under ``--out`` and a summary table (markdown + JSON) and plots
of accuracy and slot cosine similarity against rounds.

  python experiments/fedmr/reproduce.py                       # the grid in README.md
  python experiments/fedmr/reproduce.py --config experiments/fedmr/mlp.json --alphas 0.1

``--set section.field=value`` overrides the config. A run whose metrics
already hold every round is read back instead of rerun, so an interrupted grid resumes.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from fedjax_lab import grid, load_config
from fedjax_lab.plots import plot_curves
from fedjax_lab.stats import describe

HERE = pathlib.Path(__file__).parent
# variant -> (registered method, its options changed from the config's)
ALGORITHMS = {
  "fedmr": ("fedmr", {}),
  "fedavg": ("fedavg", {}),
  "fedprox": ("fedprox", {}),  # mu 0.01: the official code's prox_alpha
  "scaffold": ("scaffold", {}),
}


def final_accuracy(metrics: list[dict]) -> float:
  """Mean global accuracy over the last 3 evaluations (smooths round noise)."""
  return grid.last_evaluations(metrics, "global_accuracy")


def readme_table(summary: dict) -> str:
  """The README's table of a grid's ``summary.json``: per alpha and method, the accuracy (mean
  of the last 3 evaluations) over seeds as mean, sample std, min and max, beside the paper's
  claim."""
  claim = {"fedmr": "best of the four, largest margin at small alpha"}
  lines = [
    "| alpha | method | accuracy mean | std (ddof=1) | min | max | seeds | paper's claim |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for row in summary["rows"]:
    lines.append(
      f"| {row['alpha']} | {row['algorithm']} | {row['acc_mean']:.4f} | {row['acc_std']:.4f} | "
      f"{row['acc_min']:.4f} | {row['acc_max']:.4f} | {row['seeds']} | "
      f"{claim.get(row['algorithm'], 'below FedMR')} |"
    )
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--config",
    default=str(HERE / "reduced.json"),
    help="base config (default: reduced.json, the CNN)",
  )
  parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5, 1.0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
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
    for name in args.algorithms:
      finals = describe([final_accuracy(m) for m in curves[(alpha, name)]])
      rows.append(
        {
          "alpha": alpha,
          "algorithm": name,
          **{f"acc_{k}": finals[k] for k in ("mean", "std", "min", "max")},
          "seeds": len(curves[(alpha, name)]),
          "diverged": sum(grid.diverged(m) for m in curves[(alpha, name)]),
        }
      )
  env = {**grid.environment(started, loaded, base), "std": "sample (ddof=1)"}
  table = grid.write_results_table(
    out_root,
    rows,
    ["alpha", "algorithm", "acc_mean", "acc_std", "acc_min", "acc_max", "seeds", "diverged"],
    env,
  )
  title = lambda alpha: f"alpha = {alpha}"
  for key, file, label in (
    ("global_accuracy", "accuracy.png", "global accuracy"),
    ("client_cosine_similarity", "divergence.png", "cosine of trained models"),
  ):
    panels = grid.curve_panels(curves, args.alphas, args.algorithms, key, title)
    plot_curves(panels, out_root / file, label)
  print(table)
  print(
    f"wall time {env['wall_seconds']} s; wrote {out_root}/summary.md, summary.json, "
    "accuracy.png, divergence.png"
  )


if __name__ == "__main__":
  main()
