#!/usr/bin/env bash
# The GPU benchmark matrix (one GPU, under 8 minutes): the uniform FedAvg cells at cohorts
# 10 / 100 / 1000 (MLP and the FEMNIST CNN, vmap and chunked) and the FedMR official setting
# (skewed Dirichlet(0.1) federation, full client data, 5 epochs), printing one table.
#   bash benchmarks/gpu.sh            # needs a jax with CUDA: pip install -U "jax[cuda12]"
#   PY=python3 PYTHONPATH=$PWD bash benchmarks/gpu.sh   # a machine whose python3 has jax+CUDA
# The official cell reads Fashion-MNIST's four IDX .gz files (FEDJAX_LAB_FASHION_MNIST_DIR).
# Results go to $OUT (default benchmarks/results/gpu); record the table in docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
"$PY" -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())"
"$PY" benchmarks/bench.py --models mlp fedavg_cnn --cohorts 10 100 1000 \
  --strategies vmap chunked --chunk-size 100 --rounds 3 --out "$OUT/uniform"
# The official FedMR setting needs Fashion-MNIST (make data, or FEDJAX_LAB_FASHION_MNIST_DIR).
for strategy in vmap chunked; do
  "$PY" benchmarks/official_fedmr.py --framework jax --rounds 5 \
    --set execution.strategy=$strategy --set execution.chunk_size=5 | tee -a "$OUT/official.jsonl"
done
"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print((out / "uniform" / "results.md").read_text() if (out / "uniform" / "results.md").exists() else "")
print("| FedMR official setting | strategy | s/round (median) | real steps/s | computed/real steps | first round s | peak RSS MiB |")
print("|---|---|---|---|---|---|---|")
for line in (out / "official.jsonl").read_text().splitlines():
  r = json.loads(line)
  print(f"| fedavg, femnist_cnn, 10 of 100 clients | {r['overrides'][0].split('=')[1]} | "
        f"{r['sec_per_round_median']} | {r['real_steps_per_sec']} | {r['computed_step_ratio']} | "
        f"{r['first_round_sec']} | {r['peak_rss_mib']} |")
PY
