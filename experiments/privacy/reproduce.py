"""Accuracy against client-level (epsilon, delta) for DP-FedAvg on non-IID Fashion-MNIST.

FedAvg with uniform weights, each update clipped to ``aggregation.clip_norm`` and Gaussian noise
of std ``z C / cohort_size`` on the mean (``privacy`` section). For each noise multiplier ``z``
(0: no noise, clipping kept, the non-private reference), 3 seeds; epsilon at ``privacy.delta``
after the last round comes from dp-accounting's RDP accountant for cohorts drawn without
replacement (``ops/accounting.py``). Accuracy: the global model on the test set at the round
budget (mean of the last 2 evaluations).

  python experiments/privacy/reproduce.py                 # about 10 min on 2 CPU cores
  python experiments/privacy/reproduce.py --summarize     # the table from results/
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import time

import jax
import numpy as np

from fedjax_lab import build_federation, grid, load_config
from fedjax_lab.ops import accounting
from fedjax_lab.stats import describe, paired_difference
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent
NOISE_MULTIPLIERS = (0.0, 0.5, 1.0, 2.0)


def run_all(args, base, results: pathlib.Path) -> None:
  records, started = [], time.perf_counter()
  for seed in args.seeds:
    data_config = dataclasses.replace(base.data, seed=seed)
    data = build_federation(data_config)
    for z in NOISE_MULTIPLIERS:
      config = dataclasses.replace(
        base,
        data=data_config,
        seed=seed,
        privacy=dataclasses.replace(base.privacy, noise_multiplier=z),
        out_dir=str(pathlib.Path(args.runs) / f"seed{seed}" / f"z{z}"),
      )
      metrics, _ = grid.run_or_load(config, data)
      epsilon = accounting.epsilon(
        config.rounds, config.cohort_size, data.num_clients, z, config.privacy.delta
      )
      record = {
        "seed": seed,
        "noise_multiplier": z,
        "epsilon": epsilon if z > 0 else None,  # no noise: no finite epsilon (strict JSON)
        "accuracy": grid.last_evaluations(metrics, "global_accuracy", count=2),
      }
      records.append(record)
      print(json.dumps(record), flush=True)
  (results / "per_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  env = {
    "wall_seconds": round(time.perf_counter() - started, 1),
    "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}",
    "python": platform.python_version(),
    "jax": jax.__version__,
    "config": base.to_dict(),
  }
  (results / "environment.json").write_text(json.dumps(env, indent=1))


def summary_table(records: list[dict]) -> str:
  """Per noise multiplier: epsilon, accuracy mean ± sample std (n), and the paired accuracy
  difference against z = 0 (points, 95% t-interval)."""
  by = {(r["noise_multiplier"], r["seed"]): r for r in records}
  seeds = sorted({r["seed"] for r in records})
  rows = []
  for z in sorted({r["noise_multiplier"] for r in records}):
    accuracy = np.asarray([by[(z, s)]["accuracy"] for s in seeds]) * 100
    reference = np.asarray([by[(0.0, s)]["accuracy"] for s in seeds]) * 100
    d, diff = describe(accuracy), paired_difference(accuracy, reference)
    row = {
      "noise z": f"{z:.1f}",
      "epsilon": "inf" if z == 0 else f"{by[(z, seeds[0])]['epsilon']:.2f}",
      "accuracy %": f"{d['mean']:.2f} ± {d['std']:.2f} (n={d['n']})",
    }
    if z > 0:
      row["vs z=0, pts (95% CI)"] = (
        f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}] {diff['verdict']}"
      )
    rows.append(row)
  return format_table(rows, list(dict.fromkeys(k for row in rows for k in row)))


def main() -> None:
  parser = grid.reproduction_parser(__doc__, HERE, "runs/privacy")
  args = grid.parse_reproduction_args(parser)
  results = pathlib.Path(args.out)
  results.mkdir(parents=True, exist_ok=True)
  if not args.summarize:
    run_all(args, load_config(args.config, args.set), results)
  records = grid.read_records(results)
  table = summary_table(records)
  (results / "summary.md").write_text(f"```\n{table}\n```\n")
  print(table)


if __name__ == "__main__":
  main()
