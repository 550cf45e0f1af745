"""Seconds per round as the runner measures them (cohort gathering, the round, logging), on
small digits federations, for comparing two versions of the code side by side:

  python benchmarks/runner_rounds.py                             # this checkout
  PYTHONPATH=/path/to/old/checkout python benchmarks/runner_rounds.py

Each case runs 40 rounds of 2 local epochs (no checkpoints, one evaluation at the end) and
reports the median of ``round_seconds`` over rounds 3-39.
"""

from __future__ import annotations

import statistics
import tempfile

from fedjax_lab import load_config, run
from fedjax_lab.tables import format_table

CASES = {
  "mlp_vmap_cohort5": ["data.num_clients=20", "cohort_size=5", "execution.strategy=vmap"],
  "mlp_auto_cohort20": ["data.num_clients=40", "cohort_size=20", "execution.strategy=auto"],
  "cnn_loop_cohort5": [
    "data.num_clients=20",
    "cohort_size=5",
    "model.name=small_cnn",
    "execution.strategy=loop",
  ],
}


def main() -> None:
  rows = []
  for name, overrides in CASES.items():
    with tempfile.TemporaryDirectory() as folder:
      config = load_config(
        None,
        [
          "rounds=40",
          "eval_every=40",
          "checkpoint_every=0",
          "local.epochs=2",
          f"out_dir={folder}",
          *overrides,
        ],
      )
      metrics = run(config, progress=False).metrics
    seconds = [row["round_seconds"] for row in metrics[2:-1]]
    rows.append({"case": name, "ms_per_round": 1000 * statistics.median(seconds)})
  print(format_table(rows, ["case", "ms_per_round"]))


if __name__ == "__main__":
  main()
