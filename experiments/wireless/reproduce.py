"""Adaptive pruning with partial personalization over wireless links (Liu et al., IEEE TSP
2024), reduced scale and offline: Fashion-MNIST, the small CNN (conv5x5 8 - pool - conv5x5
16 - pool - fc 64 - fc 10, the last layer personal), 20 devices of at most 400 examples, 10
per round, pathological shards (2 classes per device) and Dirichlet(0.3), 50 rounds.

The latency budget tau is fixed before any reported run, by a rule: half the median round
latency of the unpruned comparator over the first 20 channel draws of a calibration seed
(100) that no reported run uses (``--budget_fraction``). Latency depends only on the channel
and the data sizes, so the calibration trains nothing.

Per run: client accuracy at the 50-round budget (mean of the last 2 evaluations), cumulative
simulated latency, its computation and upload parts, the mean pruning ratio, and the latency
until client accuracy first reaches a target fixed in advance (``TARGETS``). Across seeds:
mean, sample std, n, and each method's paired difference against the paper's comparator
(partial personalization without pruning, equal bandwidth).

  python experiments/wireless/reproduce.py --seeds 0 1 2                  # about 65 min, 2 cores
  python experiments/wireless/reproduce.py --seeds 0 1 2 3 4 \
      --variants adaptive_pruning fedrep_unpruned                        # 2 more seeds: 12 min
  python experiments/wireless/reproduce.py --summarize     # tables and plots from results/

Runs live in ``runs/wireless`` and are read back (or resumed) when rerun; per-seed results go
to ``results/per_seed.jsonl``, tables to ``results/summary.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np

from fedjax_lab import grid, load_config
from fedjax_lab.algorithms import adaptive_pruning as method
from fedjax_lab.build import build_experiment
from fedjax_lab.config import AlgorithmConfig
from fedjax_lab.data.catalog import DirichletOptions, ShardsOptions
from fedjax_lab.plots import pyplot
from fedjax_lab.round_step import cohort_ids
from fedjax_lab.stats import STANDARD_SEEDS, describe, paired_difference
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent
COMPARATOR = "fedrep_unpruned"
# variant -> changes to algorithm.adaptive_pruning
VARIANTS = {
  "adaptive_pruning": {},
  COMPARATOR: {"pruning": "none"},
  "unpruned_fastest_bandwidth": {"pruning": "none", "bandwidth": "fastest"},
  "fixed_ratio_equal_bandwidth": {"pruning": "fixed", "ratio": 0.5},
  "fedper_unpruned": {"pruning": "none", "update": "simultaneous"},
  "pruning_no_personalization": {"personal_groups": 0},
  "fedavg": {"pruning": "none", "personal_groups": 0},
}
PARTITIONS = {
  "shards": ({"partition": "shards", "partition_options": ShardsOptions(2)}, list(VARIANTS)),
  "dirichlet": (
    {"partition": "dirichlet", "partition_options": DirichletOptions(alpha=0.3, min_examples=20)},
    ["adaptive_pruning", COMPARATOR, "fedavg"],
  ),
}
TARGETS = {"shards": 0.90, "dirichlet": 0.75}  # client accuracy, fixed before the runs
CALIBRATION_SEED = 100


def variant_config(base, name: str, partition: str, seed: int, budget: float, runs: pathlib.Path):
  changes, _ = PARTITIONS[partition]
  options = dataclasses.replace(base.algorithm.options, latency_budget_s=budget, **VARIANTS[name])
  return dataclasses.replace(
    base,
    data=dataclasses.replace(base.data, seed=seed, **changes),
    algorithm=AlgorithmConfig("adaptive_pruning", base.algorithm.weighting, options),
    seed=seed,
    out_dir=str(runs / partition / f"seed{seed}" / name),
  )


def round_plans(config, rounds: range) -> list[method.RoundPlan]:
  """The host-side plans the run of ``config`` makes in ``rounds`` (same cohorts, keys and
  channel draws as ``runner.run``), computed without training."""
  experiment = build_experiment(config)
  options, setup = config.algorithm.options, experiment.setup
  devices = method.system_devices(setup.num_clients, options)
  head_schedule = (
    dataclasses.replace(setup.schedule, epochs=options.head_epochs)
    if options.update == "alternating"
    else None
  )
  groups = setup.layer_groups
  shared, _ = method.split_groups(setup.params_shape, groups, options.personal_groups)
  bits = method.upload_bits(shared, options)
  _, rounds_key = jax.random.split(jax.random.key(config.seed))
  plans = []
  for round_index in rounds:
    ids = cohort_ids(config.seed, round_index, setup.num_clients, config.cohort_size)
    num_examples = np.asarray(experiment.train_data.cohort(ids).num_examples)
    samples = method.samples_processed(setup.schedule, head_schedule, num_examples)
    key = jax.random.fold_in(rounds_key, round_index)
    plans.append(method.plan_round(devices.take(ids), options, num_examples, samples, key, bits))
  return plans


def calibrate_budget(base, fraction: float, runs: pathlib.Path) -> float:
  """``fraction`` x the median round latency of the comparator on the calibration seed."""
  config = variant_config(base, COMPARATOR, "shards", CALIBRATION_SEED, 1.0, runs)
  latencies = [plan.metrics()["latency_s"] for plan in round_plans(config, range(20))]
  return float(fraction * np.median(latencies))


def summarize_run(metrics: list[dict], target: float) -> dict:
  """One run's numbers (module docstring)."""
  cumulative = np.cumsum([row["latency_s"] for row in metrics])
  hits = [i for i, row in enumerate(metrics) if row.get("client_accuracy_mean", -1) >= target]
  return {
    "accuracy": grid.last_evaluations(metrics, "client_accuracy_mean", count=2),
    "latency_total_s": float(cumulative[-1]),
    "latency_round_s": float(np.mean([row["latency_s"] for row in metrics])),
    "compute_round_s": float(np.mean([row["latency_compute_s"] for row in metrics])),
    "upload_round_s": float(np.mean([row["latency_upload_s"] for row in metrics])),
    "ratio_mean": float(np.mean([row["prune_ratio_mean"] for row in metrics])),
    "feasible_rounds": float(np.mean([row["allocation_feasible"] for row in metrics])),
    "upload_mb_round": float(np.mean([row["upload_bytes_mean"] for row in metrics]) / 1e6),
    "latency_to_target_s": float(cumulative[hits[0]]) if hits else float("nan"),
  }


def _interval(difference: dict, offset: float = 0.0, sign: str = "+") -> str:
  """``mean [low, high]`` of a ``paired_difference``, shifted by ``offset``."""
  mean, low, high = (difference[k] + offset for k in ("mean", "low", "high"))
  return f"{mean:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def summary_tables(records: list[dict]) -> str:
  """Markdown: per partition, each method's mean ± sample std (n seeds; "k never" when k runs
  missed the target), and its paired difference against the comparator: accuracy in points,
  total latency and latency to target as ratios (95% t-intervals over seeds)."""
  lines = []
  for partition in PARTITIONS:
    rows = [r for r in records if r["partition"] == partition]
    if not rows:
      continue
    by = {(r["variant"], r["seed"]): r for r in rows}
    seeds_of = lambda name: sorted(seed for variant, seed in by if variant == name)
    values = lambda name, key, seeds: np.asarray([by[(name, s)][key] for s in seeds], np.float64)
    table = []
    for name in PARTITIONS[partition][1]:
      if not seeds_of(name):
        continue
      row = {"method": name}
      for key, label, scale in (
        ("accuracy", "acc %", 100),
        ("latency_total_s", "latency s", 1),
        ("latency_to_target_s", "to target s", 1),
        ("ratio_mean", "ratio", 1),
      ):
        d = describe(values(name, key, seeds_of(name)) * scale)
        never = f", {d['n_missing']} never" if d["n_missing"] else ""
        row[label] = f"{d['mean']:.2f} ± {d['std']:.2f} (n={d['n']}{never})"
      common = sorted(set(seeds_of(name)) & set(seeds_of(COMPARATOR)))
      if name != COMPARATOR and common:
        ours = lambda key: values(name, key, common)
        theirs = lambda key: values(COMPARATOR, key, common)
        accuracy = paired_difference(100 * ours("accuracy"), 100 * theirs("accuracy"))
        row["Δacc pts (95% CI)"] = f"{_interval(accuracy)} {accuracy['verdict']}"
        if accuracy["n"] < STANDARD_SEEDS and abs(accuracy["mean"]) < 2:
          row["Δacc pts (95% CI)"] += f" ({accuracy['n']} seeds, below the standard)"
        for key, label in (("latency_total_s", "latency"), ("latency_to_target_s", "to target")):
          ratio = ours(key) / theirs(key)
          row[f"{label} ratio (95% CI)"] = _interval(
            paired_difference(ratio - 1, np.zeros(len(common))), offset=1, sign=""
          )
      table.append(row)
    columns = list(dict.fromkeys(key for row in table for key in row))
    lines += [
      f"### {partition} (target client accuracy {TARGETS[partition]:.2f}; comparator: "
      f"{COMPARATOR})",
      "",
      "```",
      format_table(table, columns),
      "```",
      "",
    ]
  return "\n".join(lines)


def plot(records: list[dict], curves: dict, plans: dict, out: pathlib.Path) -> None:
  plt = pyplot()

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for index, (name, runs) in enumerate(curves.items()):
    style = dict(color=f"C{index}", label=name)
    rounds = [r["round"] for r in runs[0] if "client_accuracy_mean" in r]
    accuracy = np.mean(
      [[r["client_accuracy_mean"] for r in m if "client_accuracy_mean" in r] for m in runs], 0
    )
    latency = np.mean([np.cumsum([r["latency_s"] for r in m]) for m in runs], 0)
    axes[0].plot(rounds, accuracy, **style)
    axes[1].plot(latency[np.asarray(rounds) - 1], accuracy, **style)
  for ax, label in zip(axes[:2], ("round", "cumulative simulated latency (s)")):
    ax.set_xlabel(label)
    ax.set_ylabel("client accuracy (mean over seeds)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  shards = [r for r in records if r["partition"] == "shards"]
  names = list(dict.fromkeys(r["variant"] for r in shards))
  compute = [np.mean([r["compute_round_s"] for r in shards if r["variant"] == n]) for n in names]
  upload = [np.mean([r["upload_round_s"] for r in shards if r["variant"] == n]) for n in names]
  axes[2].barh(names, compute, label="computation")
  axes[2].barh(names, upload, left=compute, label="upload")
  axes[2].set_xlabel("slowest device's latency per round (s), shards")
  axes[2].legend(fontsize=7)
  axes[2].tick_params(axis="y", labelsize=7)
  fig.tight_layout()
  fig.savefig(out / "accuracy_latency.png", dpi=120)
  plt.close(fig)

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, (name, rounds) in zip(axes[:2], plans.items()):
    for row, plan in enumerate(rounds[:3]):
      for device in range(len(plan.rho)):
        y = row * (len(plan.rho) + 2) + device
        ax.barh(y, plan.compute_s[device], color="C0")
        ax.barh(y, plan.upload_s[device], left=plan.compute_s[device], color="C1")
    ax.set_title(f"{name}: rounds 1-3, one bar per device", fontsize=9)
    ax.set_xlabel("seconds (blue: computation, orange: upload)")
    ax.set_yticks([])
  adaptive = plans["adaptive_pruning"]
  gains = np.concatenate([plan.snr_bandwidth for plan in adaptive])
  axes[2].scatter(gains, np.concatenate([plan.rho for plan in adaptive]), s=8, label="ratio")
  share = np.concatenate([plan.bandwidth_hz / plan.bandwidth_hz.sum() for plan in adaptive])
  axes[2].scatter(gains, share, s=8, label="bandwidth share")
  axes[2].set_xscale("log")
  axes[2].set_xlabel("p h / N0 (Hz), 20 rounds x 10 devices")
  axes[2].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "allocation.png", dpi=120)
  plt.close(fig)


def finished(config) -> bool:
  """Whether ``config``'s run in its ``out_dir`` holds every round."""
  path = pathlib.Path(config.out_dir) / "metrics.jsonl"
  return path.exists() and len(path.read_text().splitlines()) >= config.rounds


def run_all(args, base, budget: float, results: pathlib.Path) -> None:
  """Run (or read back) every partition x seed x variant; write ``per_seed.jsonl`` and each
  run's metrics under ``results/metrics``. Variants outside ``args.variants`` (if given) are
  never started: only their finished runs are read back and reported."""
  runs, started = pathlib.Path(args.runs), time.perf_counter()
  (results / "metrics").mkdir(parents=True, exist_ok=True)
  records = []
  configs = {
    (partition, name, seed): variant_config(base, name, partition, seed, budget, runs)
    for partition in args.partitions
    for seed in args.seeds
    for name in PARTITIONS[partition][1]
  }
  configs = {  # variants outside args.variants: only their finished runs, read back
    key: config
    for key, config in configs.items()
    if not args.variants or key[1] in args.variants or finished(config)
  }
  read_back = sum(finished(config) for config in configs.values())

  def report(key, metrics):
    partition, name, seed = key
    record = {"partition": partition, "seed": seed, "variant": name}
    record.update(summarize_run(metrics, TARGETS[partition]))
    records.append(record)
    path = results / "metrics" / f"{partition}_seed{seed}_{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in metrics))
    print(
      f"{partition} seed {seed} {name}: accuracy {record['accuracy']:.4f}, latency "
      f"{record['latency_total_s']:.1f} s",
      flush=True,
    )

  grid.run_configs(configs, report)
  (results / "per_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  env = {
    "latency_budget_s": budget,
    "wall_seconds": round(time.perf_counter() - started, 1),
    "runs_read_back_not_rerun": read_back,
    "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}",
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "seeds": args.seeds,
    "config": variant_config(base, "adaptive_pruning", "shards", 0, budget, runs).to_dict(),
  }
  (results / "environment.json").write_text(json.dumps(env, indent=1))


def summarize(base, results: pathlib.Path, runs: pathlib.Path) -> str:
  """Tables and plots from the committed files in ``results`` alone."""
  records = [json.loads(line) for line in (results / "per_seed.jsonl").read_text().splitlines()]
  env = json.loads((results / "environment.json").read_text())
  curves: dict[str, list] = {}
  for record in records:
    if record["partition"] == "shards":
      path = results / "metrics" / f"shards_seed{record['seed']}_{record['variant']}.jsonl"
      rows = [json.loads(line) for line in path.read_text().splitlines()]
      curves.setdefault(record["variant"], []).append(rows)
  budget, seed = env["latency_budget_s"], env["seeds"][0]
  plans = {
    name: round_plans(variant_config(base, name, "shards", seed, budget, runs), range(20))
    for name in ("adaptive_pruning", COMPARATOR)
  }
  plot(records, curves, plans, results)
  tables = summary_tables(records)
  header = (
    f"Latency budget tau = {budget:.3f} s; {env['machine']}, {env['cpu_count']} cores, "
    f"jax {env['jax']}, python {env['python']}; wall time {env['wall_seconds']:.0f} s.\n"
  )
  (results / "summary.md").write_text(header + "\n" + tables)
  return header + tables


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=PARTITIONS)
  parser.add_argument(
    "--variants", nargs="+", choices=VARIANTS, help="start only these (others: read back)"
  )
  parser.add_argument("--budget_fraction", type=float, default=0.5)
  parser.add_argument("--config", default=str(HERE / "base.json"))
  parser.add_argument("--runs", default="runs/wireless")
  parser.add_argument("--out", default=str(HERE / "results"))
  parser.add_argument("--set", action="append", default=[], help="config override")
  parser.add_argument(
    "--summarize", action="store_true", help="tables and plots from --out only, no runs"
  )
  args = parser.parse_args()
  base = load_config(args.config, args.set)
  results = pathlib.Path(args.out)
  results.mkdir(parents=True, exist_ok=True)
  if not args.summarize:
    budget = calibrate_budget(base, args.budget_fraction, pathlib.Path(args.runs))
    print(f"latency budget tau = {budget:.3f} s (calibration seed {CALIBRATION_SEED})", flush=True)
    run_all(args, base, budget, results)
  print(summarize(base, results, pathlib.Path(args.runs)))


if __name__ == "__main__":
  main()
