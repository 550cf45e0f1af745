"""Reduced-scale pFedLIA reproduction, offline, every client in every round.

Benchmarks (``benchmarks.json``, each a list of overrides of ``reduced.json``):
  permuted     Fashion-MNIST, 100 clients of 100 examples, 4 latent groups by label permutation
  rotated      the same clients, 4 groups by image rotation (0/90/180/270 degrees)
  dirichlet    Fashion-MNIST, 100 clients, Dirichlet(0.1) label skew (no true groups: no Oracle)
  shakespeare  next-character prediction (small Transformer), 30 (play, character) clients,
               groups = play genre (comedy, history, tragedy)

Algorithms: pFedLIA central (agglomerative, threshold 0: the number of clusters is not given)
and decentralized (positive-influence neighbourhoods), Oracle (true groups), IFCA (k given),
CFL, FedAvg, Local. Reports, per benchmark and algorithm, the mean over seeds of the clients'
mean personalized accuracy and its 10th percentile (last 3 evaluations) and the adjusted Rand
index of the final clusters against the true groups.

  python experiments/pfedlia/reproduce.py
  python experiments/pfedlia/reproduce.py --benchmarks permuted --seeds 0 --set rounds=10

A run whose metrics already hold every round is read back instead of rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import numpy as np

from fedjax_lab import build_federation, grid, load_config

HERE = pathlib.Path(__file__).parent
BENCHMARKS = json.loads((HERE / "benchmarks.json").read_text())


# variant -> (registered method, its options changed from the config's)
ALGORITHMS = {
  "pfedlia": ("pfedlia", {}),
  "pfedlia_decentralized": ("pfedlia", {"clustering": "decentralized"}),
  "oracle": ("oracle", {}),
  "ifca": ("ifca", {}),
  "cfl": ("cfl", {}),
  "fedavg": ("fedavg", {}),
  "local": ("local", {}),
}


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=BENCHMARKS)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
  parser.add_argument(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    metavar="SECTION.FIELD=VALUE",
    help="override every benchmark (repeatable)",
  )
  args = parser.parse_args()
  out_root = pathlib.Path(load_config(str(HERE / "reduced.json"), args.overrides).out_dir)
  out_root.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  curves, rows, loaded, bases = {}, [], 0, {}
  for benchmark in args.benchmarks:
    base = load_config(str(HERE / "reduced.json"), BENCHMARKS[benchmark] + args.overrides)
    bases[benchmark] = base.to_dict()
    for seed in args.seeds:
      data_config = dataclasses.replace(base.data, seed=seed)
      data = build_federation(data_config)
      variants = {
        name: grid.algorithm_variant(
          str(HERE / "reduced.json"), BENCHMARKS[benchmark] + args.overrides, *ALGORITHMS[name]
        )
        for name in args.algorithms
        if name != "oracle" or data.client_groups is not None
      }
      results, read_back = grid.run_variants(
        base,
        data_config,
        seed,
        variants,
        out_root / benchmark / f"seed{seed}",
        data,
        f"{benchmark} seed={seed}",
        "client_accuracy_mean",
      )
      loaded += read_back
      for name, metrics in results.items():
        curves.setdefault((benchmark, name), []).append(metrics)
    for name in args.algorithms:
      runs = curves.get((benchmark, name))
      if not runs:
        continue
      accuracy = grid.spread([grid.last_evaluations(m, "client_accuracy_mean") for m in runs])
      p10 = grid.spread([grid.last_evaluations(m, "client_accuracy_p10") for m in runs])
      ari = [grid.last_evaluations(m, "cluster_ari", 1) for m in runs]
      clusters = [grid.last_evaluations(m, "num_clusters", 1) for m in runs]
      rows.append(
        {
          "benchmark": benchmark,
          "algorithm": name,
          "acc_mean": accuracy["mean"],
          "acc_std": accuracy["std"],
          "p10_mean": p10["mean"],
          "ari_mean": grid.spread(ari)["mean"],
          "clusters_mean": grid.spread(clusters)["mean"],
          "seeds": len(runs),
          "round_seconds": float(
            np.mean([r["round_seconds"] for m in runs for r in m if "round_seconds" in r])
          ),
        }
      )
  env = grid.environment(started, loaded, load_config(str(HERE / "reduced.json"), args.overrides))
  env["benchmark_configs"] = bases
  table = grid.write_summary(
    out_root,
    rows,
    [
      "benchmark",
      "algorithm",
      "acc_mean",
      "acc_std",
      "p10_mean",
      "ari_mean",
      "clusters_mean",
      "seeds",
      "round_seconds",
    ],
    env,
  )
  grid.plot_curves(
    curves,
    args.benchmarks,
    args.algorithms,
    out_root / "accuracy.png",
    "client_accuracy_mean",
    "clients' mean personalized accuracy",
  )
  print(table)
  print(
    f"wall time {env['wall_seconds']} s; wrote {out_root}/summary.md, summary.json, accuracy.png"
  )


if __name__ == "__main__":
  main()
