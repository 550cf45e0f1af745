"""Reduced-scale FedMR reproduction, offline: Fashion-MNIST, 100 clients, 10 per round,
MOON-style capped Dirichlet(alpha) label skew; FedMR against FedAvg, FedProx and SCAFFOLD over
several seeds. Writes every run under ``--out`` and a summary table (markdown + JSON) and plots
of accuracy and slot cosine similarity against rounds.

  python experiments/fedmr/reproduce.py                       # the grid in README.md
  python experiments/fedmr/reproduce.py --alphas 0.1 --seeds 0 --set model.name=femnist_cnn

``--set section.field=value`` overrides ``reduced.json``. A run whose metrics
already hold every round is read back instead of rerun, so an interrupted grid resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import time

import numpy as np

from fedjax_lab import build_federation, load_config, run
from fedjax_lab.cli import format_table
from fedjax_lab.config import AlgorithmConfig

HERE = pathlib.Path(__file__).parent
ALGORITHMS = {
    "fedmr": lambda base: base.algorithm,
    "fedavg": lambda base: AlgorithmConfig("fedavg"),
    "fedprox": lambda base: AlgorithmConfig("fedprox", prox_mu=0.01),   # the code's prox_alpha
    "scaffold": lambda base: AlgorithmConfig("scaffold"),
}


def final_accuracy(metrics: list[dict], last_evals: int = 3) -> float:
  """Mean global accuracy over the last ``last_evals`` evaluations (smooths round noise)."""
  values = [m["global_accuracy"] for m in metrics if "global_accuracy" in m]
  return float(np.mean(values[-last_evals:]))


def run_or_load(config, data) -> tuple[list[dict], bool]:
  """(metrics, whether they were read back from an earlier complete run)."""
  path = pathlib.Path(config.out_dir) / "metrics.jsonl"
  if path.exists():
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if rows and rows[-1]["round"] == config.rounds:
      return rows, True
  return run(config, data=data, progress=False).metrics, False


def plot_curves(curves: dict, alphas, path: pathlib.Path, key: str, ylabel: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(alphas), figsize=(4.2 * len(alphas), 3.4), squeeze=False)
  for ax, alpha in zip(axes[0], alphas):
    for index, name in enumerate(ALGORITHMS):
      runs = curves.get((alpha, name), [])
      series = [[(m["round"], m[key]) for m in rows if key in m] for rows in runs]
      series = [s for s in series if s]
      if not series:
        continue
      rounds = [r for r, _ in series[0]]
      values = np.array([[v for _, v in s] for s in series])
      ax.plot(rounds, values.mean(0), color=f"C{index}", label=name)
      ax.fill_between(rounds, values.min(0), values.max(0), color=f"C{index}", alpha=0.15)
    ax.set_title(f"alpha = {alpha}", fontsize=9)
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(ylabel)
  axes[0][-1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5, 1.0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
  parser.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="SECTION.FIELD=VALUE", help="override reduced.json (repeatable)")
  args = parser.parse_args()
  base = load_config(str(HERE / "reduced.json"), args.overrides)
  out_root = pathlib.Path(base.out_dir)
  started = time.perf_counter()
  curves, rows, loaded = {}, [], 0
  for alpha in args.alphas:
    for seed in args.seeds:
      data_config = dataclasses.replace(base.data, alpha=alpha, seed=seed)
      data = build_federation(data_config)
      for name in args.algorithms:
        config = dataclasses.replace(
            base, data=data_config, seed=seed, algorithm=ALGORITHMS[name](base),
            out_dir=str(out_root / f"alpha{alpha}" / f"seed{seed}" / name))
        tick = time.perf_counter()
        metrics, was_loaded = run_or_load(config, data)
        loaded += was_loaded
        curves.setdefault((alpha, name), []).append(metrics)
        print(f"alpha={alpha} seed={seed} {name}: final acc {final_accuracy(metrics):.4f} "
              f"({time.perf_counter() - tick:.0f} s)", flush=True)
    for name in args.algorithms:
      finals = [final_accuracy(m) for m in curves[(alpha, name)]]
      rows.append({"alpha": alpha, "algorithm": name, "acc_mean": float(np.mean(finals)),
                   "acc_std": float(np.std(finals)), "acc_min": float(np.min(finals)),
                   "acc_max": float(np.max(finals)), "seeds": len(finals)})
  table = format_table(rows, ["alpha", "algorithm", "acc_mean", "acc_std", "acc_min", "acc_max",
                              "seeds"])
  import jax
  environment = {"wall_seconds": round(time.perf_counter() - started, 1),
                 "runs_read_back_not_rerun": loaded,
                 "machine": f"{platform.machine()}, {jax.device_count()} x "
                            f"{jax.devices()[0].device_kind}",
                 "python": platform.python_version(), "jax": jax.__version__,
                 "config": base.to_dict()}
  (out_root / "summary.json").write_text(json.dumps({"rows": rows, **environment}, indent=2))
  (out_root / "summary.md").write_text(f"```\n{table}\n```\n\n{json.dumps(environment)}\n")
  plot_curves(curves, args.alphas, out_root / "accuracy.png", "global_accuracy",
              "global accuracy")
  plot_curves(curves, args.alphas, out_root / "divergence.png", "client_cosine_similarity",
              "cosine of trained models")
  print(table)
  print(f"wall time {environment['wall_seconds']} s; wrote {out_root}/summary.md, summary.json, "
        "accuracy.png, divergence.png")


if __name__ == "__main__":
  main()
