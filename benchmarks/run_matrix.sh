#!/usr/bin/env bash
# The benchmark matrix recorded in docs/performance.md (about 25 minutes on 2 CPU cores).
# Cells that would take many minutes a round on CPU (vmapped lax.conv at cohort 100) are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
"$PY" benchmarks/bench.py --models mlp --cohorts 10 100 1000 --strategies vmap chunked loop loop/4 \
  --rounds 2 --out "$OUT/mlp_loop_blocks"
"$PY" benchmarks/bench.py --models mlp --cohorts 100 --strategies vmap chunked --rounds 2 \
  --xla-flags=--xla_cpu_use_xnnpack=true --out "$OUT/mlp_xnnpack"
"$PY" benchmarks/bench.py --models mlp --cohorts 100 --strategies chunked --rounds 2 \
  --compute-dtype bfloat16 --out "$OUT/mlp_bf16"
"$PY" benchmarks/bench.py --models fedavg_cnn --cohorts 10 --strategies loop vmap chunked \
  --convs xla im2col --rounds 1 --out "$OUT/cnn10"
# vmap+im2col at cohort 100 was killed for memory (over 22 GiB: every client's patches of every
# unrolled step); chunks of 8 bound it.
"$PY" benchmarks/bench.py --models fedavg_cnn --cohorts 100 --strategies loop --rounds 1 \
  --out "$OUT/cnn100"
"$PY" benchmarks/bench.py --models fedavg_cnn --cohorts 100 --strategies chunked --convs im2col \
  --rounds 1 --out "$OUT/cnn100_im2col"
# Cohort 1,000 of the FEMNIST-size CNN, for peak memory: 2 local steps instead of 10.
"$PY" benchmarks/bench.py --models fedavg_cnn --cohorts 1000 --strategies loop --steps 2 \
  --rounds 1 --out "$OUT/cnn1000_memory"
"$PY" benchmarks/bench.py --models cifar_cnn --cohorts 10 100 --strategies loop vmap \
  --rounds 1 --out "$OUT/cifar_cnn"
