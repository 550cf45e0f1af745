"""FedBuff and FedAsync against synchronous FedAvg on the same heterogeneous devices: accuracy
against simulated time, and against the number of results aggregated.

The federation, model, local training and devices are ``base.json``'s with timed devices
(compute lognormal around 200 examples/s, spread 1: a heavy tail of slow phones; links 2 / 20
Mbit/s), as in ``reproduce.py``. FedAvg: 10 clients a round, 80 rounds (the server waits for
the slowest of each cohort). FedBuff (Nguyen et al. 2022): 30 clients in flight, a server step
after every 10 results, staleness discount ``1/sqrt(1 + tau)``, 500 rounds. FedAsync (Xie et
al. 2019): 10 in flight, each result mixed in on arrival with ``alpha = 0.6`` discounted by
``(1 + tau) ** -0.5``, 2500 rounds. The papers' staleness settings, server step 1; nothing was
tuned on these runs. The target accuracy, 80%, was fixed before the runs (FedAvg's ideal
40-round budget in ``reproduce.py`` is 82%). 5 seeds (data, devices, cohorts, training).

Reported per method (mean ± sample std, n seeds; paired differences against FedAvg with 95%
t-intervals): simulated hours to reach the target (the first evaluation at or above it) and
the speed-up, FedAvg's hours over the method's (per seed); accuracy at simulated budgets of
0.1, 0.25 and 0.4 h (the last evaluation at or before each; 0.4 h is the longest every run
covers); accuracy at the last evaluation after at most 400 results were aggregated (FedAvg's
40 rounds of 10), with the results it had counted (evaluations fall every few rounds, so
FedBuff's is at 370 and FedAsync's at 390).

  python experiments/systems/asynchronous.py               # about 30 min on 2 CPU cores
  python experiments/systems/asynchronous.py --summarize   # the tables from results/
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time

import numpy as np

from fedjax_lab import grid, load_config
from fedjax_lab.plots import pyplot
from fedjax_lab.stats import format_paired, format_spread

HERE = pathlib.Path(__file__).parent
TIMED = ["systems.compute_median=200"]
METHODS = {
  "fedavg": ["rounds=80", "eval_every=2"],
  "fedbuff": [
    "algorithm.fedbuff.concurrency=30",
    "algorithm.fedbuff.staleness_exponent=0.5",
    "rounds=500",
    "eval_every=10",
  ],
  "fedasync": [
    "cohort_size=1",
    "algorithm.fedasync.concurrency=10",
    "algorithm.fedasync.alpha=0.6",
    "algorithm.fedasync.staleness_exponent=0.5",
    "rounds=2500",
    "eval_every=50",
  ],
}
TARGET = 0.80
BUDGETS_H = (0.1, 0.25, 0.4)  # 0.4 h: the longest budget every run covers
RESULTS_AGGREGATED = 400
SYNCHRONOUS_COHORT = 10  # base.json's cohort_size: FedAvg aggregates that many a round


def cell_config(args, method: str, seed: int):
  overrides = [*TIMED, f"algorithm.name={method}", *METHODS[method], *args.set]
  config = load_config(args.config, overrides)
  return dataclasses.replace(
    config,
    data=dataclasses.replace(config.data, seed=seed),
    seed=seed,
    out_dir=str(pathlib.Path(args.runs) / f"seed{seed}" / method),
  )


def evaluations(metrics) -> list[tuple[float, float, int]]:
  """``(simulated seconds, accuracy, results aggregated)`` at every evaluation of a run."""
  points, aggregated = [], 0
  for row in metrics:
    aggregated += row.get("arrivals", SYNCHRONOUS_COHORT)
    if "global_accuracy" in row:
      points.append((row["simulated_seconds"], row["global_accuracy"], aggregated))
  return points


def record(method: str, seed: int, metrics) -> dict:
  """One run's figures (module docstring); NaN where the run did not get there."""
  points = evaluations(metrics)
  reached = [t for t, accuracy, _ in points if accuracy >= TARGET]
  at_time = lambda hours: [a for t, a, _ in points if t <= hours * 3600]
  at_results = [(a, n) for _, a, n in points if n <= RESULTS_AGGREGATED]
  covers = lambda hours: points[-1][0] >= hours * 3600
  return {
    "method": method,
    "seed": seed,
    "hours_to_target": reached[0] / 3600 if reached else math.nan,
    **{
      f"accuracy_at_{h}h": at_time(h)[-1] if at_time(h) and covers(h) else math.nan
      for h in BUDGETS_H
    },
    f"accuracy_at_{RESULTS_AGGREGATED}_results": at_results[-1][0] if at_results else math.nan,
    f"results_by_{RESULTS_AGGREGATED}": at_results[-1][1] if at_results else math.nan,
    "simulated_hours": points[-1][0] / 3600,
    "final_accuracy": points[-1][1],
    "staleness_mean": float(np.mean([r["staleness_mean"] for r in metrics if r.get("arrivals")]))
    if method != "fedavg"
    else 0.0,
  }


def run_all(args, results: pathlib.Path) -> None:
  started = time.perf_counter()
  curves = results / "curves"
  curves.mkdir(parents=True, exist_ok=True)
  configs = {
    (method, seed): cell_config(args, method, seed)
    for seed in args.seeds
    for method in args.methods
    if not (curves / f"{method}_seed{seed}.jsonl").exists()
  }

  def report(key, metrics):
    method, seed = key
    grid.write_metrics_file(curves / f"{method}_seed{seed}.jsonl", metrics)
    print(method, seed, json.dumps(record(method, seed, metrics)), flush=True)

  grid.run_configs(configs, report)
  env = grid.environment(started, 0, cell_config(args, "fedbuff", args.seeds[0]))
  (results / "environment.json").write_text(json.dumps(env, indent=1))


def read_records(results: pathlib.Path) -> list[dict]:
  """Every committed curve's ``record``, recomputed from ``results/curves``."""
  records = []
  for file in sorted((results / "curves").glob("*_seed*.jsonl")):
    method, seed = file.stem.rsplit("_seed", 1)
    records.append(record(method, int(seed), grid.read_metrics_file(file)))
  return records


COLUMNS = {
  "hours_to_target": ("h to 80%", 1.0, 3),
  **{f"accuracy_at_{h}h": (f"acc % at {h} h", 100.0, 1) for h in BUDGETS_H},
  f"accuracy_at_{RESULTS_AGGREGATED}_results": (
    f"acc % at <= {RESULTS_AGGREGATED} results",
    100,
    1,
  ),
  f"results_by_{RESULTS_AGGREGATED}": (f"results counted (<= {RESULTS_AGGREGATED})", 1.0, 0),
  "staleness_mean": ("mean staleness", 1.0, 2),
}


def summary_table(records) -> str:
  """One row per method: each column's mean ± sample std (n); below it, the paired difference
  to FedAvg of each column (same seed)."""
  from fedjax_lab.tables import format_table

  by = lambda method, key: {r["seed"]: r[key] for r in records if r["method"] == method}
  rows = []
  for method in METHODS:
    if not by(method, "seed"):
      continue
    row = {"method": method}
    for key, (title, scale, digits) in COLUMNS.items():
      spread = format_spread(list(by(method, key).values()), digits=digits, scale=scale)
      row[title] = spread.replace("diverged", "not reached")
    rows.append(row)
    if method == "fedavg":
      continue
    speedup = by(method, "hours_to_target")
    fedavg_hours = by("fedavg", "hours_to_target")
    ratios = [fedavg_hours[s] / speedup[s] for s in sorted(set(speedup) & set(fedavg_hours))]
    row["FedAvg's h / h to 80%"] = format_spread(ratios, digits=2).replace(
      "diverged", "not reached"
    )
    paired = {"method": "  - fedavg"}
    for key, (title, scale, digits) in COLUMNS.items():
      ours, fedavg = by(method, key), by("fedavg", key)
      seeds = sorted(set(ours) & set(fedavg))
      paired[title] = (
        format_paired([scale * ours[s] for s in seeds], [scale * fedavg[s] for s in seeds], digits)
        if key not in ("staleness_mean", f"results_by_{RESULTS_AGGREGATED}")
        else ""
      )
    rows.append(paired)
  columns = list(dict.fromkeys(key for row in rows for key in row))
  return format_table(rows, columns) if rows else "(no results)"


def plot_curves(results: pathlib.Path, path: pathlib.Path) -> None:
  """Accuracy against simulated hours (left) and against results aggregated (right), seed 0."""
  plt = pyplot()
  fig, (by_time, by_results) = plt.subplots(1, 2, figsize=(9, 3.6))
  for method in METHODS:
    file = results / "curves" / f"{method}_seed0.jsonl"
    if not file.exists():
      continue
    points = evaluations(grid.read_metrics_file(file))
    hours = [t / 3600 for t, _, _ in points]
    accuracy = [a for _, a, _ in points]
    by_time.plot(hours, accuracy, label=method, linewidth=1)
    by_results.plot([n for _, _, n in points], accuracy, label=method, linewidth=1)
  for ax, label in ((by_time, "simulated hours"), (by_results, "results aggregated")):
    ax.axhline(TARGET, color="grey", linewidth=0.5, linestyle="--")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.5, 0.9)
    ax.grid(alpha=0.3)
  by_results.set_xlim(0, 2000)
  by_time.legend(fontsize=7)
  fig.suptitle("Fashion-MNIST, 100 clients, heterogeneous devices (seed 0)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = grid.reproduction_parser(__doc__, HERE, "runs/systems_async")
  parser.set_defaults(seeds=[0, 1, 2, 3, 4], out=str(HERE / "results" / "asynchronous"))
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  args = grid.parse_reproduction_args(parser)
  results = pathlib.Path(args.out)
  results.mkdir(parents=True, exist_ok=True)
  if not args.summarize:
    run_all(args, results)
  records = read_records(results)
  (results / "per_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  table = summary_table(records)
  (results / "summary.md").write_text(f"```\n{table}\n```\n")
  plot_curves(results, results / "accuracy_vs_time.png")
  print(table)


if __name__ == "__main__":
  main()
