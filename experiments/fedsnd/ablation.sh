#!/usr/bin/env bash
# FedSND ablation on the text variant (cheap): one change at a time against the defaults of
# text.json, 3 seeds, FedAvg first (the rounds-to-target reference). Writes
# runs/fedsnd_text_ablation/<name>/summary.md and copies each summary.json to
# experiments/fedsnd/results/text_ablation/<name>.json (the README's table:
# reproduce.text_ablation_table).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
run() {
  local name=$1; shift
  "$PY" experiments/fedsnd/reproduce.py --config experiments/fedsnd/text.json --alphas 0.5 \
    --algorithms fedavg fedsnd "$@" --set "out_dir=runs/fedsnd_text_ablation/$name" | tail -4
  mkdir -p experiments/fedsnd/results/text_ablation
  cp "runs/fedsnd_text_ablation/$name/summary.json" "experiments/fedsnd/results/text_ablation/$name.json"
}
run weak_self_distillation --set algorithm.fedsnd.self_distill_weight=0.3
run strong_server_distillation --set algorithm.fedsnd.distill_steps=20 \
  --set algorithm.fedsnd.distill_learning_rate=0.05
run more_noise_steps --set algorithm.fedsnd.noise_steps=50
run ensemble_teacher --set algorithm.fedsnd.distill_mode=ensemble
run fresh_noise_each_round --set algorithm.fedsnd.adaptive=false
