"""Population sweep: FedAvg on federations of 10^2 to 10^6 LEAF-style synthetic clients.

  python benchmarks/population.py                         # 10^2 .. 10^6 clients, cohort 100
  python benchmarks/population.py --clients 1000 100000 --rounds 12 --cohort 50

Clients are made on demand (``data.source=synthetic_clients``: Synthetic(1, 1), LEAF's
lognormal sizes, 60 features, 10 classes, ``data/generated.py``). Each federation size runs in
its own process, so peak memory (max RSS) and compilations are its own. Per cell: seconds to
build the federation, peak RSS, seconds per round (median of the rounds after the first), the
bytes the cohort moves to the device over its real bytes (whole chunks of
``transfer.chunk_rows`` rows, each row with its 4-byte destination; the per-round maximum),
compilations after round 5, and the bytes the padded store this project used before
(``[num_clients, max_examples, ...]``) would have held.
Local training: one epoch of batch 32, MLP, SGD 0.05; cohort sampled uniformly each round.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

COLUMNS = [
  "clients",
  "build_s",
  "peak_rss_gib",
  "s_per_round",
  "moved_over_real_max",
  "compiles_after_round_5",
  "padded_store_gib",
]


def cell(num_clients: int, cohort: int, rounds: int) -> dict:
  """One federation size, measured in this process (module docstring)."""
  import jax
  from jax import monitoring

  from fedjax_lab import load_config
  from fedjax_lab.algorithms import compiled_round
  from fedjax_lab.build import build_experiment, build_federation
  from fedjax_lab.data import transfer
  from fedjax_lab.round_step import cohort_ids

  compiles = []
  monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: (
      compiles.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
    )
  )
  config = load_config(
    None,
    [
      "data.source=synthetic_clients",
      "data.partition=natural",
      f"data.num_clients={num_clients}",
      f"cohort_size={min(cohort, num_clients)}",
      "local.epochs=1",
      "local.batch_size=32",
      "local.learning_rate=0.05",
      "execution.strategy=vmap",
      f"eval_clients={min(1000, num_clients)}",
    ],
  )
  tick = time.perf_counter()
  data = build_federation(config.data)
  build_seconds = time.perf_counter() - tick
  experiment = build_experiment(config, data)
  round_fn = compiled_round(experiment.algorithm, experiment.setup.executor)
  state = experiment.algorithm.init(jax.random.key(0))
  sizes = data.train.num_examples
  chunk = transfer.chunk_rows(data.train.total / num_clients * config.cohort_size)
  x, y = data.train.gather([int(sizes.argmax())])
  row_bytes = x[0].nbytes + y[0].nbytes
  seconds, ratios, compiles_at = [], [], {}
  for r in range(rounds):
    tick = time.perf_counter()
    ids = cohort_ids(0, r, num_clients, config.cohort_size)
    real = int(sizes[ids].sum())
    ratios.append(-(-real // chunk) * chunk * (row_bytes + 4) / (real * row_bytes))
    state, metrics = round_fn(state, data.cohort(ids), jax.random.key(r))
    jax.block_until_ready(metrics)
    seconds.append(time.perf_counter() - tick)
    compiles_at[r + 1] = len(compiles)
  return {
    "clients": num_clients,
    "build_s": round(build_seconds, 2),
    "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    "s_per_round": round(statistics.median(seconds[1:]), 3),
    "moved_over_real_max": round(max(ratios), 3),
    "compiles_after_round_5": compiles_at[rounds] - compiles_at[min(5, rounds)],
    "padded_store_gib": round(num_clients * data.max_examples * row_bytes / 2**30, 2),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--clients", type=int, nargs="+", default=[100, 1000, 10_000, 100_000, 1_000_000]
  )
  parser.add_argument("--cohort", type=int, default=100)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--cell", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.cell is not None:
    print(json.dumps(cell(args.cell, args.cohort, args.rounds)))
    return
  from fedjax_lab.tables import format_table

  rows = []
  for num_clients in args.clients:
    command = [
      sys.executable,
      __file__,
      f"--cell={num_clients}",
      f"--cohort={args.cohort}",
      f"--rounds={args.rounds}",
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rows.append(json.loads(output.strip().splitlines()[-1]))
    print(json.dumps(rows[-1]), flush=True)
  print(
    f"\n{platform.processor() or platform.machine()}, cohort {args.cohort}, {args.rounds} rounds"
  )
  print(format_table(rows, COLUMNS))


if __name__ == "__main__":
  main()
