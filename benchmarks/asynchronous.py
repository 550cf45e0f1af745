"""Cost per client update of the asynchronous simulation against synchronous FedAvg on the same
model, cohort size and timed devices (issue: within 1.5x), as the runner measures rounds:

  python benchmarks/asynchronous.py            # about 3 min on a 2-core CPU

Each pair runs FedAvg and the asynchronous method (FedBuff with ``K`` = the cohort and 3K in
flight; FedAsync with ``K = 1``) alternately, twice, 30 rounds each on Fashion-MNIST
Dirichlet(0.5) clients of at most 600 examples, 2 local epochs of batch 32; a round's time is
the median ``round_seconds`` of rounds 6-29 (compilation and the slot filling excluded).
Appends its rows to ``benchmarks/results/asynchronous.jsonl``.
"""

from __future__ import annotations

import json
import pathlib
import platform
import statistics
import tempfile

import jax

from fedjax_lab import load_config, run
from fedjax_lab.tables import format_table

BASE = [
  "data.source=fashion_mnist_idx",
  "data.num_clients=100",
  "data.dirichlet.alpha=0.5",
  "data.dirichlet.min_examples=20",
  "data.max_client_examples=600",
  "data.test_fraction=0",
  "local.epochs=2",
  "local.batch_size=32",
  "local.learning_rate=0.05",
  "systems.compute_median=200",
  "systems.uplink_mbps=2",
  "systems.downlink_mbps=20",
  "rounds=30",
  "eval_every=30",
  "checkpoint_every=0",
]
PAIRS = {
  "mlp, cohort 10, fedbuff": (
    ["model.name=mlp", "cohort_size=10"],
    ["algorithm.name=fedbuff", "algorithm.fedbuff.concurrency=30"],
  ),
  "small_cnn, cohort 10, fedbuff": (
    ["model.name=small_cnn", "cohort_size=10"],
    ["algorithm.name=fedbuff", "algorithm.fedbuff.concurrency=30"],
  ),
  "mlp, cohort 1, fedasync": (
    ["model.name=mlp", "cohort_size=1"],
    ["algorithm.name=fedasync", "algorithm.fedasync.concurrency=10"],
  ),
}
REPEATS = 2
RESULTS = pathlib.Path(__file__).parent / "results" / "asynchronous.jsonl"


def seconds_per_round(overrides: list[str]) -> float:
  with tempfile.TemporaryDirectory() as folder:
    config = load_config(None, [*BASE, *overrides, f"out_dir={folder}"])
    rows = run(config, progress=False).metrics
  return statistics.median(row["round_seconds"] for row in rows[5:-1])


def main() -> None:
  table = []
  for name, (shared, method) in PAIRS.items():
    fedavg, asynchronous = [], []
    for _ in range(REPEATS):
      fedavg.append(seconds_per_round(shared))
      asynchronous.append(seconds_per_round([*shared, *method]))
    cohort = int(shared[1].split("=")[1])
    row = {
      "pair": name,
      "fedavg_ms_per_update": 1000 * statistics.median(fedavg) / cohort,
      "async_ms_per_update": 1000 * statistics.median(asynchronous) / cohort,
    }
    row["ratio"] = row["async_ms_per_update"] / row["fedavg_ms_per_update"]
    table.append(row)
    record = {**row, "fedavg_s": fedavg, "async_s": asynchronous}
    record.update(backend=jax.default_backend(), machine=platform.processor() or platform.machine())
    with RESULTS.open("a") as file:
      file.write(json.dumps(record) + "\n")
  print(format_table(table, ["pair", "fedavg_ms_per_update", "async_ms_per_update", "ratio"]))


if __name__ == "__main__":
  main()
