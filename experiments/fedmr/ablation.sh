#!/usr/bin/env bash
# Why does FedMR trail FedAvg at alpha = 0.1? One seed, one change at a time.
#   bash experiments/fedmr/ablation.sh cnn    # the FEMNIST-style CNN (reduced.json)
#   bash experiments/fedmr/ablation.sh mlp    # the MLP (mlp.json)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
which=${1:-cnn}
if [[ $which == mlp ]]; then config=experiments/fedmr/mlp.json; else config=experiments/fedmr/reduced.json; fi
run() { local name=$1; shift
  "$PY" experiments/fedmr/reproduce.py --config "$config" --alphas 0.1 --seeds 0 \
    --set out_dir=runs/fedmr_ablation_$which/$name "$@"; }
if [[ $which == mlp ]]; then
  run layer       --algorithms fedmr --set algorithm.fedmr.granularity=layer
  run first_stage --algorithms fedmr --set algorithm.fedmr.first_stage_rounds=20
  run lr0.01      --algorithms fedmr fedavg --set local.learning_rate=0.01
  run rounds150   --algorithms fedmr fedavg --set rounds=150
  run femnist_cnn --algorithms fedmr fedavg --set model.name=femnist_cnn --set local.epochs=1 \
    --set local.learning_rate=0.01 --set rounds=30
else
  run layer       --algorithms fedmr --set algorithm.fedmr.granularity=layer
  run first_stage --algorithms fedmr --set algorithm.fedmr.first_stage_rounds=20
  run lr0.05      --algorithms fedmr fedavg --set local.learning_rate=0.05
  run rounds100   --algorithms fedmr fedavg --set rounds=100
fi
