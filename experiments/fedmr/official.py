"""FedAvg and FedMR at the FedMR paper's own setting (``official.json``: Fashion-MNIST, the
official ``CNNFashionMnist`` shape, 100 clients of a capped Dirichlet(alpha) split with full
client data, 10 a round, 5 local epochs of batch 50, SGD lr 0.01 momentum 0.5, global test set
only, 100 rounds, evaluation every 10). Runs finished in ``runs/fedmr_official/`` with the same
config are read back, not rerun. Writes ``results/official/``: each run's metrics
(``<algorithm>_alpha<a>_seed<s>.jsonl``), ``summary.md`` (accuracy at round 100, the mean of
the last 3 evaluations, training seconds per round, wall time) and ``accuracy.png``.

  python experiments/fedmr/official.py [--seeds 0] [--alphas 0.1] [--algorithms fedavg fedmr]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

from fedjax_lab import build_federation, grid, load_config
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--alphas", type=float, nargs="+", default=[0.1])
  parser.add_argument("--algorithms", nargs="+", default=["fedavg", "fedmr"])
  parser.add_argument("--runs", default="runs/fedmr_official")
  args = parser.parse_args()
  results = HERE / "results" / "official"
  results.mkdir(parents=True, exist_ok=True)
  rows, curves = [], {}
  for alpha in args.alphas:
    for seed in args.seeds:
      suffix = "" if (alpha, seed) == (0.1, 0) else f"_alpha{alpha}_seed{seed}"
      base = [f"data.alpha={alpha}", f"data.seed={seed}", f"seed={seed}"]
      data = build_federation(load_config(str(HERE / "official.json"), base).data)
      for name in args.algorithms:
        config = load_config(
          str(HERE / "official.json"),
          base + [f"algorithm.name={name}", f"out_dir={args.runs}/{name}{suffix}"],
        )
        tick = time.perf_counter()
        metrics, read_back = grid.run_or_load(config, data)
        stem = f"{name}_alpha{alpha}_seed{seed}"
        (results / f"{stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
        curves.setdefault((alpha, name), []).append(metrics)
        evaluated = [r for r in metrics if "global_accuracy" in r]
        rows.append(
          {
            "alpha": alpha,
            "seed": seed,
            "algorithm": name,
            "acc_round_100": evaluated[-1]["global_accuracy"],
            "acc_last_3_evals": grid.last_evaluations(metrics, "global_accuracy"),
            "train_s_per_round": statistics.mean(r["round_seconds"] for r in metrics),
            "read_back": read_back,
            "script_seconds": round(time.perf_counter() - tick, 1),
          }
        )
  table = format_table(
    rows,
    ["alpha", "seed", "algorithm", "acc_round_100", "acc_last_3_evals", "train_s_per_round",
     "read_back"],
  )  # fmt: skip
  (results / "summary.md").write_text(f"```\n{table}\n```\n")
  grid.plot_curves(
    curves, args.alphas, args.algorithms, results / "accuracy.png", "global_accuracy",
    "global test accuracy", panel_title=lambda alpha: f"official setting, alpha={alpha}",
  )  # fmt: skip
  print(table)


if __name__ == "__main__":
  main()
