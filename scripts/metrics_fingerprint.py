"""Metrics of short runs of FedAvg (plain, under central and local DP), FedProx (median
aggregation under attack), SCAFFOLD, FedMR, pFedLIA and FedSND, as JSON: the recorded
check that a refactor leaves results unchanged. Run it before and after, then compare:

  python scripts/metrics_fingerprint.py > before.json   # on the old commit
  python scripts/metrics_fingerprint.py > after.json    # on the new one
  cmp before.json after.json                            # bit-identical metrics
"""

from __future__ import annotations

import json
import sys
import tempfile

from fedjax_lab import load_config, run

BASE = [
  "data.source=digits",
  "data.num_clients=8",
  "data.dirichlet.min_examples=15",
  "local.batch_size=16",
  "local.epochs=2",
  "rounds=4",
  "cohort_size=4",
  "eval_every=2",
  "checkpoint_every=0",
]
RUNS = {
  "fedavg": ["algorithm.name=fedavg"],
  "scaffold": ["algorithm.name=scaffold"],
  "fedmr": ["algorithm.name=fedmr", "algorithm.fedmr.first_stage_rounds=1"],
  "pfedlia": ["algorithm.name=pfedlia", "cohort_size=8", "algorithm.pfedlia.warmup_rounds=1"],
  "fedavg_chunked": [
    "algorithm.name=fedavg",
    "execution.strategy=chunked",
    "execution.chunk_size=3",
  ],
  "fedavg_loop_cnn": ["algorithm.name=fedavg", "model.name=small_cnn", "execution.strategy=loop"],
  "scaffold_chunked": [
    "algorithm.name=scaffold",
    "execution.strategy=chunked",
    "execution.chunk_size=3",
  ],
  "fedavg_dp": [
    "algorithm.name=fedavg",
    "algorithm.weighting=uniform",
    "aggregation.clip_norm=1.0",
    "privacy.noise_multiplier=0.5",
  ],
  "fedavg_local_dp": [
    "algorithm.name=fedavg",
    "aggregation.clip_norm=1.0",
    "privacy.local_noise_multiplier=0.05",
  ],
  "fedprox_median_attacked": [
    "algorithm.name=fedprox",
    "aggregation.rule=median",
    "attack.kind=sign_flip",
    "attack.fraction=0.25",
    "attack.strength=2",
  ],
  "fedsnd": [
    "algorithm.name=fedsnd",
    "algorithm.fedsnd.pseudo_per_client=4",
    "algorithm.fedsnd.noise_steps=2",
    "algorithm.fedsnd.distill_steps=2",
  ],
}


def main() -> None:
  results = {}
  with tempfile.TemporaryDirectory() as out_dir:
    for name, overrides in RUNS.items():
      config = load_config(None, BASE + overrides + [f"out_dir={out_dir}/{name}"])
      rows = run(config, progress=False).metrics
      results[name] = [{k: v for k, v in row.items() if k != "round_seconds"} for row in rows]
  json.dump(results, sys.stdout, indent=1, sort_keys=True)
  print()


if __name__ == "__main__":
  main()
