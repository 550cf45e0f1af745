"""The client learning rate for experiments/worldlm, tuned away from the reported benchmark:
on another draw of documents (``data.seed=99``) and another training seed (99), FedAvg and
WorldLM at each rate for 100 rounds; the rate with the lowest mean perplexity of the two at
the last evaluation is the one ``base.json`` uses.

  python experiments/worldlm/tune.py        # about 10 min on 2 CPU cores
"""

from __future__ import annotations

import json
import pathlib

from fedjax_lab import grid, load_config

HERE = pathlib.Path(__file__).parent
RATES = (0.001, 0.003, 0.01)


def main() -> None:
  records = []
  for rate in RATES:
    for variant in ("fedavg", "worldlm"):
      config = load_config(
        str(HERE / "base.json"),
        [
          "data.seed=99",
          "seed=99",
          "rounds=100",
          f"local.learning_rate={rate}",
          f"algorithm.worldlm.variant={variant}",
          f"out_dir=runs/worldlm_tune/{variant}_lr{rate}",
        ],
      )
      metrics, _ = grid.run_or_load(config, None)
      record = {
        "learning_rate": rate,
        "variant": variant,
        "perplexity": grid.last_evaluations(metrics, "client_perplexity", count=1),
      }
      records.append(record)
      print(json.dumps(record), flush=True)
  (HERE / "results").mkdir(exist_ok=True)
  (HERE / "results" / "tuning.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
  main()
