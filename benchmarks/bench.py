"""Round-speed benchmark: every execution strategy against the sequential per-client loop.

  python benchmarks/bench.py                          # the default matrix, a table at the end
  python benchmarks/bench.py --models mlp --cohorts 10 100 --strategies vmap chunked loop loop/4
  python benchmarks/bench.py --models fedavg_cnn --convs xla im2col --strategies vmap loop

FedAvg rounds of ``--steps`` local SGD steps of batch ``--batch`` per client on synthetic data
(200 examples per client, as in issue 3's measurements). Each cell runs in its own process so
that peak memory (max RSS) and compilations are its own. Per cell: seconds per round (median),
client updates and examples per second, achieved GFLOP/s (XLA's cost analysis of one training
step x steps x cohort) and its fraction of the float32 matmul peak measured in the same run,
compile time (first round minus the median), compilations after the first round, peak RSS.
``loop`` (a jitted per-client update driven from Python, ``--threads`` calls at once) is the
baseline: the ``speedup`` column is its seconds per round over the cell's. ``loop/k``: calls of
k vmapped clients. Convolutional models run once per
``--convs`` entry (``xla``: ``lax.conv``; ``im2col``: matrix products, models/im2col.py). With
two or more cohorts, a least-squares line ``s/round = intercept + slope x cohort`` is fitted per
model and strategy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

MODELS = {
  "mlp": ((28, 28, 1), 10),
  "fedavg_cnn": ((28, 28, 1), 62),
  "cifar_cnn": ((32, 32, 3), 10),
  "resnet20": ((32, 32, 3), 10),
}
EXAMPLES_PER_CLIENT = 200


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
  import jax
  import jax.numpy as jnp

  a = jnp.ones((size, size), jnp.float32)
  product = jax.jit(lambda x: x @ x)
  product(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    product(a).block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def run_cell(
  model_name: str,
  cohort: int,
  strategy: str,
  conv: str,
  steps: int,
  batch: int,
  rounds: int,
  unroll: str,
  chunk_size: int,
  compute_dtype: str,
  threads: int,
) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax import monitoring

  from fedjax_lab.algorithms import ClientSetup, compiled_round
  from fedjax_lab.algorithms.fedopt import fedopt
  from fedjax_lab.data import FederatedData
  from fedjax_lab.data.sources import Dataset
  from fedjax_lab.engine.execution import Executor
  from fedjax_lab.engine.local import LocalSchedule
  from fedjax_lab.models import build_model

  name, _, per_call = strategy.partition("/")  # loop/4: loop calls of 4 vmapped clients
  compiles = []
  monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: (
      compiles.append(1) if name == "/jax/core/compile/backend_compile_duration" else None
    )
  )
  shape, num_classes = MODELS[model_name]
  rng = np.random.default_rng(0)
  total = cohort * EXAMPLES_PER_CLIENT
  dataset = Dataset(
    rng.random((total,) + shape, np.float32),
    rng.integers(0, num_classes, total).astype(np.int32),
    np.zeros((1,) + shape, np.float32),
    np.zeros(1, np.int32),
    num_classes,
  )
  clients = np.split(np.arange(total), cohort)
  data = FederatedData.from_indices(dataset, clients, [np.array([], np.int64)] * cohort)
  model = build_model(model_name, num_classes, conv)
  use_unroll = unroll == "unroll"  # auto: rolled, as the runner's auto
  setup = ClientSetup(
    model,
    data.train_x[0, :1],
    optax.sgd(0.01),
    LocalSchedule(batch, data.max_examples, steps=steps, min_examples=EXAMPLES_PER_CLIENT),
    Executor(name, chunk_size, threads, int(per_call or 1)),
    cohort,
    use_unroll,
    compute_dtype,
  )
  algorithm = fedopt(setup, optax.sgd(1.0))
  round_fn = compiled_round(algorithm, setup.executor, donate=True)
  state = algorithm.init(jax.random.key(0))
  cohort_data = data.cohort(np.arange(cohort))
  times = []
  for r in range(rounds + 1):
    if r == 1:
      compiles_before = len(compiles)
    start = time.perf_counter()
    state, metrics = round_fn(state, cohort_data, jax.random.key(r))
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times[1:]))
  recompiles = len(compiles) - compiles_before

  params = setup.init_params(jax.random.key(0))
  x, y = jnp.zeros((batch,) + shape), jnp.zeros(batch, jnp.int32)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
  cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops_per_round = float(cost["flops"]) * steps * cohort
  label = _label(strategy, conv, compute_dtype)
  return {
    "model": model_name,
    "cohort": cohort,
    "strategy": label,
    "unroll": use_unroll,
    "seconds_per_round": seconds,
    "client_updates_per_s": cohort / seconds,
    "examples_per_s": cohort * steps * batch / seconds,
    "gflops": flops_per_round / seconds / 1e9,
    "compile_s": times[0] - seconds,
    "compiles_after_first_round": recompiles,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def _label(strategy: str, conv: str, compute_dtype: str) -> str:
  return "+".join([strategy] + [conv] * (conv != "xla") + ["bf16"] * (compute_dtype != "float32"))


def linear_fits(rows: list[dict]) -> list[dict]:
  """Least-squares ``s/round = intercept + slope * cohort`` per (model, strategy)."""
  import numpy as np

  fits = []
  measured = [r for r in rows if "error" not in r]
  for model, strategy in dict.fromkeys((r["model"], r["strategy"]) for r in measured):
    points = [
      (r["cohort"], r["seconds_per_round"])
      for r in measured
      if r["model"] == model and r["strategy"] == strategy
    ]
    if len({c for c, _ in points}) >= 2:
      slope, intercept = np.polyfit(*zip(*points), 1)
      fits.append(
        {
          "model": model,
          "strategy": strategy,
          "slope_s_per_client": float(slope),
          "intercept_s": float(intercept),
          "cohorts": [c for c, _ in points],
        }
      )
  return fits


def markdown_table(rows: list[dict], peak: float) -> str:
  header = (
    "| model | cohort | strategy | s/round | speedup vs loop | client upd/s | examples/s "
    "| GFLOP/s | % of matmul peak | compile s | recompiles | peak RSS MiB |"
  )
  lines = [header, "|" + "---|" * 12]
  for row in rows:
    if "error" in row:
      lines.append(
        f"| {row['model']} | {row['cohort']} | {row['strategy']} | failed: "
        f"{row['error'][:60]} |" + " |" * 8
      )
      continue
    lines.append(
      f"| {row['model']} | {row['cohort']} | {row['strategy']} | "
      f"{row['seconds_per_round']:.3f} | {row.get('speedup', float('nan')):.2f}x | "
      f"{row['client_updates_per_s']:.1f} | {row['examples_per_s']:.0f} | {row['gflops']:.1f} | "
      f"{100 * row['gflops'] / peak:.0f}% | {row['compile_s']:.1f} | "
      f"{row['compiles_after_first_round']} | {row['peak_rss_mib']:.0f} |"
    )
  fits = linear_fits(rows)
  if fits:
    lines += [
      "",
      "| model | strategy | slope s/client | intercept s | cohorts |",
      "|---|---|---|---|---|",
    ]
    lines += [
      f"| {f['model']} | {f['strategy']} | {f['slope_s_per_client']:.4f} | "
      f"{f['intercept_s']:.3f} | {', '.join(map(str, f['cohorts']))} |"
      for f in fits
    ]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--models", nargs="+", default=["mlp", "fedavg_cnn"], choices=MODELS)
  parser.add_argument("--cohorts", nargs="+", type=int, default=[10, 100])
  parser.add_argument(
    "--strategies",
    nargs="+",
    default=["vmap", "chunked", "loop"],
    help="`loop` is one client a call (the sequential baseline); `loop/k`: calls of k clients",
  )
  parser.add_argument(
    "--convs",
    nargs="+",
    default=["xla"],
    choices=["xla", "im2col", "explicit_vjp"],
    help="convolution implementations (convolutional models only)",
  )
  parser.add_argument("--chunk-size", type=int, default=8)
  parser.add_argument(
    "--threads", type=int, default=0, help="calls `loop` runs at once (0: the runner's auto)"
  )
  parser.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument(
    "--xla-flags", default="", help="XLA_FLAGS for every cell, e.g. --xla_cpu_use_xnnpack=true"
  )
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--batch", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--unroll", default="auto", choices=["auto", "scan", "unroll"])
  parser.add_argument("--out", default="benchmarks/results")
  parser.add_argument(
    "--cell", nargs=4, metavar=("MODEL", "COHORT", "STRATEGY", "CONV"), help=argparse.SUPPRESS
  )
  args = parser.parse_args()
  if args.cell:
    model, cohort, strategy, conv = args.cell
    print(
      json.dumps(
        run_cell(
          model,
          int(cohort),
          strategy,
          conv,
          args.steps,
          args.batch,
          args.rounds,
          args.unroll,
          args.chunk_size,
          args.compute_dtype,
          args.threads or (min(2, os.cpu_count() or 1) if strategy.startswith("loop") else 1),
        )
      )
    )
    return

  import jax

  peak = matmul_peak_gflops()
  print(f"float32 matmul peak: {peak:.1f} GFLOP/s", flush=True)
  rows = []
  for model in args.models:
    for cohort in args.cohorts:
      cell_rows = []
      convs = args.convs if model != "mlp" else ["xla"]
      for strategy, conv in [(s, c) for s in args.strategies for c in convs]:
        command = [
          sys.executable,
          __file__,
          "--cell",
          model,
          str(cohort),
          strategy,
          conv,
          "--steps",
          str(args.steps),
          "--batch",
          str(args.batch),
          "--rounds",
          str(args.rounds),
          "--unroll",
          args.unroll,
          "--chunk-size",
          str(args.chunk_size),
          "--threads",
          str(args.threads),
          "--compute-dtype",
          args.compute_dtype,
        ]
        env = dict(os.environ, XLA_FLAGS=args.xla_flags) if args.xla_flags else None
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
          label = _label(strategy, conv, args.compute_dtype)
          row = {
            "model": model,
            "cohort": cohort,
            "strategy": label,
            "error": (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1],
          }
        else:
          row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        cell_rows.append(row)
      baseline = next((r for r in cell_rows if r["strategy"] == "loop" and "error" not in r), None)
      for row in cell_rows:
        if baseline and "error" not in row:
          row["speedup"] = baseline["seconds_per_round"] / row["seconds_per_round"]
      rows.extend(cell_rows)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  environment = {
    "date": datetime.date.today().isoformat(),
    "machine": platform.machine(),
    "cpus": os.cpu_count(),
    "xla_flags": args.xla_flags,
    "backend": jax.default_backend(),
    "device": jax.devices()[0].device_kind,
    "jax": jax.__version__,
    "python": platform.python_version(),
    "matmul_peak_gflops": peak,
    "steps": args.steps,
    "batch": args.batch,
    "rounds": args.rounds,
    "chunk_size": args.chunk_size,
    "threads": args.threads or "auto",
  }
  (out / "results.json").write_text(
    json.dumps(
      {"environment": environment, "rows": rows, "linear_fits": linear_fits(rows)}, indent=2
    )
  )
  table = markdown_table(rows, peak)
  (out / "results.md").write_text(f"{json.dumps(environment)}\n\n{table}\n")
  print(table)


if __name__ == "__main__":
  main()
