#!/usr/bin/env bash
# Why does FedMR trail FedAvg at alpha = 0.1 in the reduced run? One seed, one change at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
run() { local name=$1; shift
  "$PY" experiments/fedmr/reproduce.py --config experiments/fedmr/mlp.json --alphas 0.1 --seeds 0 --set out_dir=runs/fedmr_ablation/$name "$@"; }
run layer       --algorithms fedmr --set algorithm.fedmr.granularity=layer
run first_stage --algorithms fedmr --set algorithm.fedmr.first_stage_rounds=20
run lr0.01      --algorithms fedmr fedavg --set local.learning_rate=0.01
run rounds150   --algorithms fedmr fedavg --set rounds=150
run femnist_cnn --algorithms fedmr fedavg --set model.name=femnist_cnn --set local.epochs=1 --set local.learning_rate=0.01 --set rounds=30
