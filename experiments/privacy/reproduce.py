"""Accuracy against client-level (epsilon, delta) for DP-FedAvg on non-IID Fashion-MNIST.

FedAvg with uniform weights, each update clipped to ``aggregation.clip_norm`` and Gaussian noise
of std ``z C / cohort_size`` on the mean (``privacy`` section). For each noise multiplier ``z``
(0: no noise, clipping kept, the non-private reference), 3 seeds; epsilon at ``privacy.delta``
after the last round comes from dp-accounting's RDP accountant for cohorts drawn without
replacement (``ops/accounting.py``). Accuracy: the global model on the test set at the round
budget (mean of the last 2 evaluations).

Part ``personalized``: the same runs with a 20% test split per client and local adaptation at
evaluation (``eval_finetune_epochs=1``: FedAvg-FT, each client's copy of the global model after
one local epoch on its own data, never uploaded, so the guarantee is unchanged); accuracy on
the clients' own test splits, of the global model and of the adapted ones. Part ``poisson``:
the main runs with Poisson cohorts (each client joins with probability 0.2, the mean over the
expected cohort size) and the PLD accountant under add-or-remove-one.

  python experiments/privacy/reproduce.py                 # about 10 min on 2 CPU cores
  python experiments/privacy/reproduce.py --part personalized --seeds 0 1 2 3 4   # 15 min
  python experiments/privacy/reproduce.py --part poisson  # about 10 min
  python experiments/privacy/reproduce.py --summarize     # the tables from results/
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import time

import jax
import numpy as np

from fedjax_lab import grid, load_config
from fedjax_lab.ops import accounting
from fedjax_lab.stats import format_paired, format_spread
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent
NOISE_MULTIPLIERS = (0.0, 0.5, 1.0, 2.0)
# part -> config overrides on base.json
PARTS = {
  "main": [],
  "personalized": ["data.test_fraction=0.2", "eval_finetune_epochs=1"],
  "poisson": ["cohort_sampling=poisson", "privacy.accountant=pld"],
}
# record field -> metric (the mean of the last 2 evaluations)
MEASURES = {
  "main": {"accuracy": "global_accuracy"},
  "poisson": {"accuracy": "global_accuracy"},
  "personalized": {
    "accuracy": "global_accuracy",
    "client_accuracy": "client_accuracy_mean",
    "adapted_client_accuracy": "adapted_client_accuracy_mean",
  },
}


def run_all(args, base, results: pathlib.Path) -> None:
  """Every seed and noise multiplier of ``args.part``; the part's records in
  ``per_seed.jsonl`` are replaced, the other parts' kept."""
  runs = pathlib.Path(args.runs) / ("" if args.part == "main" else args.part)
  records = [r for r in grid.read_records(results) if r.get("part", "main") != args.part]
  started = time.perf_counter()
  configs = {
    (z, seed): dataclasses.replace(
      base,
      data=dataclasses.replace(base.data, seed=seed),
      seed=seed,
      privacy=dataclasses.replace(base.privacy, noise_multiplier=z),
      out_dir=str(runs / f"seed{seed}" / f"z{z}"),
    )
    for seed in args.seeds
    for z in NOISE_MULTIPLIERS
  }

  def report(key, metrics):
    (z, seed), config = key, configs[key]
    epsilon = accounting.epsilon(
      config.rounds,
      config.cohort_size,
      config.data.num_clients,
      z,
      config.privacy.delta,
      config.privacy.accountant,
      config.cohort_sampling,
    )
    record = {
      "part": args.part,
      "seed": seed,
      "noise_multiplier": z,
      "epsilon": epsilon if z > 0 else None,  # no noise: no finite epsilon (strict JSON)
    }
    for field, metric in MEASURES[args.part].items():
      record[field] = grid.last_evaluations(metrics, metric, count=2)
    records.append(record)
    print(json.dumps(record), flush=True)

  grid.run_configs(configs, report)
  (results / "per_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  env = {
    "wall_seconds_last_invocation": round(time.perf_counter() - started, 1),
    "last_part": args.part,
    "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}",
    "python": platform.python_version(),
    "jax": jax.__version__,
    "config": base.to_dict(),
  }
  (results / "environment.json").write_text(json.dumps(env, indent=1))


def _points(by, z, seeds, field) -> np.ndarray:
  return np.asarray([by[(z, s)][field] for s in seeds]) * 100


def summary_table(records: list[dict], part: str = "main") -> str:
  """Per noise multiplier of ``part``: epsilon, accuracy mean ± sample std (n), and the paired
  accuracy difference against z = 0 (points, 95% t-interval); for another part than ``main``
  also the paired difference against ``main`` at the same z."""
  main = {(r["noise_multiplier"], r["seed"]): r for r in records if r.get("part", "main") == "main"}
  records = [r for r in records if r.get("part", "main") == part]
  by = {(r["noise_multiplier"], r["seed"]): r for r in records}
  seeds = sorted({r["seed"] for r in records})
  rows = []
  for z in sorted({r["noise_multiplier"] for r in records}):
    accuracy = _points(by, z, seeds, "accuracy")
    row = {
      "noise z": f"{z:.1f}",
      "epsilon": "inf" if z == 0 else f"{by[(z, seeds[0])]['epsilon']:.2f}",
      "accuracy %": format_spread(accuracy),
    }
    if z > 0:
      row["vs z=0, pts (95% CI)"] = format_paired(
        accuracy, _points(by, 0.0, seeds, "accuracy"), within=2
      )
    if part != "main":
      row["vs fixed-size cohorts, pts (95% CI)"] = format_paired(
        accuracy, _points(main, z, seeds, "accuracy"), within=2
      )
    rows.append(row)
  columns = ["noise z", "epsilon", "accuracy %", "vs z=0, pts (95% CI)"]
  columns += ["vs fixed-size cohorts, pts (95% CI)"] if part != "main" else []
  return format_table(rows, columns)


def personalized_table(records: list[dict]) -> str:
  """Per noise multiplier, on the clients' own test splits: the global model (FedAvg) and its
  locally adapted copies (FedAvg-FT), the paired gain of adaptation, and each one's loss
  against z = 0 with the paired difference of the two losses."""
  records = [r for r in records if r.get("part") == "personalized"]
  by = {(r["noise_multiplier"], r["seed"]): r for r in records}
  seeds = sorted({r["seed"] for r in records})
  rows = []
  for z in sorted({r["noise_multiplier"] for r in records}):
    fedavg = _points(by, z, seeds, "client_accuracy")
    adapted = _points(by, z, seeds, "adapted_client_accuracy")
    row = {
      "noise z": f"{z:.1f}",
      "epsilon": "inf" if z == 0 else f"{by[(z, seeds[0])]['epsilon']:.2f}",
      "FedAvg %": format_spread(fedavg),
      "FedAvg-FT %": format_spread(adapted),
      "FT - FedAvg, pts (95% CI)": format_paired(adapted, fedavg),
    }
    if z > 0:
      fedavg_loss = fedavg - _points(by, 0.0, seeds, "client_accuracy")
      adapted_loss = adapted - _points(by, 0.0, seeds, "adapted_client_accuracy")
      row["FedAvg vs z=0"] = f"{fedavg_loss.mean():+.2f}"
      row["FT vs z=0"] = f"{adapted_loss.mean():+.2f}"
      row["FT loss - FedAvg loss (95% CI)"] = format_paired(adapted_loss, fedavg_loss)
    rows.append(row)
  return format_table(rows, list(dict.fromkeys(k for row in rows for k in row)))


def main() -> None:
  parser = grid.reproduction_parser(__doc__, HERE, "runs/privacy")
  parser.add_argument("--part", choices=list(PARTS), default="main")
  args = grid.parse_reproduction_args(parser)
  results = pathlib.Path(args.out)
  results.mkdir(parents=True, exist_ok=True)
  if not args.summarize:
    run_all(args, load_config(args.config, PARTS[args.part] + args.set), results)
  records = grid.read_records(results)
  text = f"```\n{summary_table(records)}\n```\n"
  if any(r.get("part") == "personalized" for r in records):
    text += f"\n## personalized\n\n```\n{personalized_table(records)}\n```\n"
  if any(r.get("part") == "poisson" for r in records):
    text += f"\n## poisson\n\n```\n{summary_table(records, 'poisson')}\n```\n"
  (results / "summary.md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
