"""FedAvg, FedProx, FedNova and SCAFFOLD on unreliable, heterogeneous devices; FedAvg's uploads
compressed.

Non-IID Fashion-MNIST (``base.json``: 100 clients, Dirichlet(0.5) labels and sizes, up to 600
examples, two local epochs: clients take different numbers of steps). Every run has timed
devices (``systems.compute_median``: 200 examples/s, lognormal spread 1; links 2 Mbit/s up,
20 down), so each reports accuracy against simulated time. Settings (``SETTINGS``): an ideal
system; 30% of each cohort dropping mid-round; a 10 s deadline (late clients are cut), and the
same deadline where late clients send the steps they finished (partial work; not SCAFFOLD);
FedAvg's uploads compressed at several levels: QSGD at 4 and 2 bits, top-10% and top-1%
sparsification without and with error feedback, and QSGD under the deadline (smaller uploads:
fewer late clients). Accuracy: the global model on the test set at the 40-round budget
(mean of the last 2 evaluations), mean ± sample std over 5 seeds, and the paired difference to
FedAvg on the ideal system (same seed).

  python experiments/systems/reproduce.py                 # about 35 min on 2 CPU cores
  python experiments/systems/reproduce.py --summarize     # the tables from results/
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np

from fedjax_lab import grid, load_config
from fedjax_lab.plots import pyplot
from fedjax_lab.stats import format_paired, format_spread

HERE = pathlib.Path(__file__).parent
TIMED = ["systems.compute_median=200"]
QSGD = ["compression.name=qsgd", "compression.qsgd.bits=4"]
TOP_K_10 = ["compression.name=top_k", "compression.top_k.fraction=0.1"]
TOP_K_1 = ["compression.name=top_k", "compression.top_k.fraction=0.01"]
SETTINGS = {
  "ideal": [],
  "dropout_30": ["systems.dropout=0.3"],
  "deadline_10s": ["systems.deadline_s=10"],
  "qsgd_4bit": QSGD,
  "top_k_10": TOP_K_10,
  "deadline_10s_qsgd_4bit": ["systems.deadline_s=10", *QSGD],
  "deadline_10s_partial": ["systems.deadline_s=10", "systems.stragglers=partial"],
  "top_k_10_feedback": [*TOP_K_10, "compression.error_feedback=true"],
  "qsgd_2bit": ["compression.name=qsgd", "compression.qsgd.bits=2"],
  "top_k_1": TOP_K_1,
  "top_k_1_feedback": [*TOP_K_1, "compression.error_feedback=true"],
}
METHODS = {
  "fedavg": [],
  "fedprox": ["algorithm.fedprox.mu=0.01"],
  "fednova": [],
  "scaffold": [],  # keeps the control variates of the clients it loses
}
COMPRESSED = (  # FedAvg only
  "qsgd_4bit",
  "top_k_10",
  "deadline_10s_qsgd_4bit",
  "top_k_10_feedback",
  "qsgd_2bit",
  "top_k_1",
  "top_k_1_feedback",
)
PARTIAL = "deadline_10s_partial"  # methods whose local training takes a step limit


def cells(methods, settings) -> list[tuple[str, str]]:
  """``(method, setting)`` of every run: each method in each setting, compression with FedAvg
  only, partial work without SCAFFOLD (it cannot take it)."""
  return [
    (m, s)
    for m in methods
    for s in settings
    if (s not in COMPRESSED or m == "fedavg") and (s != PARTIAL or m != "scaffold")
  ]


def cell_config(args, method: str, setting: str, seed: int):
  overrides = [*args.set, *TIMED, f"algorithm.name={method}", *METHODS[method], *SETTINGS[setting]]
  config = load_config(args.config, overrides)
  return dataclasses.replace(
    config,
    data=dataclasses.replace(config.data, seed=seed),
    seed=seed,
    out_dir=str(pathlib.Path(args.runs) / f"seed{seed}" / f"{method}_{setting}"),
  )


def run_all(args, results: pathlib.Path) -> None:
  started = time.perf_counter()
  records = grid.read_records(results)
  done = {(r["method"], r["setting"], r["seed"]) for r in records}
  curves = results / "curves"
  curves.mkdir(exist_ok=True)
  configs = {
    (method, setting, seed): cell_config(args, method, setting, seed)
    for seed in args.seeds
    for method, setting in cells(args.methods, args.settings)
    if (method, setting, seed) not in done
  }

  def report(key, metrics):
    method, setting, seed = key
    grid.write_metrics_file(curves / f"{method}_{setting}_seed{seed}.jsonl", metrics)
    record = {
      "method": method,
      "setting": setting,
      "seed": seed,
      "accuracy": grid.last_evaluations(metrics, "global_accuracy", count=2),
      "simulated_hours": metrics[-1]["simulated_seconds"] / 3600,
      "megabytes_up": sum(m["bytes_up"] for m in metrics) / 1e6,
      "clients_lost": sum(m["clients_dropped"] + m["clients_late"] for m in metrics),
    }
    record["accuracy"] = None if np.isnan(record["accuracy"]) else record["accuracy"]
    records.append(record)
    (results / "per_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(json.dumps(record), flush=True)

  grid.run_configs(configs, report)
  env = grid.environment(started, 0, cell_config(args, "fedavg", "ideal", args.seeds[0]))
  (results / "environment.json").write_text(json.dumps(env, indent=1))


def _values(records, method, setting, key) -> dict[int, float]:
  """seed -> ``key`` (NaN for a diverged run's accuracy)."""
  return {
    r["seed"]: np.nan if r[key] is None else r[key]
    for r in records
    if r["method"] == method and r["setting"] == setting
  }


def summary_table(records) -> str:
  """One row per (method, setting): accuracy (%), simulated hours, MB uploaded, clients lost
  over the run (mean ± sample std, n seeds), and the paired accuracy difference to FedAvg on
  the ideal system."""
  from fedjax_lab.tables import format_table

  baseline = {s: 100 * v for s, v in _values(records, "fedavg", "ideal", "accuracy").items()}
  rows = []
  for method, setting in cells(METHODS, SETTINGS):
    accuracy = {s: 100 * v for s, v in _values(records, method, setting, "accuracy").items()}
    if not accuracy:
      continue
    seeds = sorted(set(accuracy) & set(baseline))
    spread = lambda key, digits: format_spread(
      list(_values(records, method, setting, key).values()), digits=digits
    )
    rows.append(
      {
        "method": method,
        "system": setting,
        "accuracy %": format_spread(list(accuracy.values()), digits=1),
        "simulated h": spread("simulated_hours", 2),
        "MB up": spread("megabytes_up", 0),
        "clients lost": spread("clients_lost", 0),
        "vs fedavg ideal, pts (95% CI)": "-"
        if (method, setting) == ("fedavg", "ideal")
        else format_paired(
          [accuracy[s] for s in seeds], [baseline[s] for s in seeds], digits=1, within=2
        ),
      }
    )
  return format_table(rows, list(rows[0])) if rows else "(no results)"


def same_setting_table(records) -> str:
  """FedProx, FedNova and SCAFFOLD against FedAvg in the same setting: the paired accuracy
  difference
  (points, 95% CI)."""
  from fedjax_lab.tables import format_table

  rows = []
  for method in ("fedprox", "fednova", "scaffold"):
    row = {"method": method}
    for setting in SETTINGS:
      ours, fedavg = (
        {s: 100 * v for s, v in _values(records, m, setting, "accuracy").items()}
        for m in (method, "fedavg")
      )
      seeds = sorted(set(ours) & set(fedavg))
      if seeds and setting not in COMPRESSED:
        row[setting] = format_paired(
          [ours[s] for s in seeds], [fedavg[s] for s in seeds], 2, within=2
        )
    if len(row) > 1:
      rows.append(row)
  return format_table(rows, list(rows[0])) if rows else "(no results)"


EFFECTS = (  # (what is compared, method, setting, against setting)
  ("partial work - dropping stragglers", "fedavg", PARTIAL, "deadline_10s"),
  ("partial work - dropping stragglers", "fedprox", PARTIAL, "deadline_10s"),
  ("partial work - dropping stragglers", "fednova", PARTIAL, "deadline_10s"),
  ("error feedback - none, top-10%", "fedavg", "top_k_10_feedback", "top_k_10"),
  ("error feedback - none, top-1%", "fedavg", "top_k_1_feedback", "top_k_1"),
)


def effects_table(records) -> str:
  """Partial work against dropping the stragglers, and error feedback against none: the
  paired accuracy difference (points, 95% CI) of the same method on the same seeds."""
  from fedjax_lab.tables import format_table

  rows = []
  for what, method, setting, against in EFFECTS:
    ours, theirs = (
      {s: 100 * v for s, v in _values(records, method, x, "accuracy").items()}
      for x in (setting, against)
    )
    seeds = sorted(set(ours) & set(theirs))
    if len(seeds) > 1:
      rows.append(
        {
          "comparison": what,
          "method": method,
          "pts (95% CI)": format_paired(
            [ours[s] for s in seeds], [theirs[s] for s in seeds], 1, within=2
          ),
        }
      )
  return format_table(rows, list(rows[0])) if rows else "(no results)"


def plot_time_curves(results: pathlib.Path, path: pathlib.Path) -> None:
  """FedAvg's accuracy against simulated time in each setting (seed 0)."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.8))
  for setting in ("ideal", "dropout_30", "deadline_10s", PARTIAL, "qsgd_4bit"):
    file = results / "curves" / f"fedavg_{setting}_seed0.jsonl"
    if not file.exists():
      continue
    points = [
      (m["simulated_seconds"] / 3600, m["global_accuracy"])
      for m in grid.read_metrics_file(file)
      if "global_accuracy" in m
    ]
    ax.plot(*zip(*points), marker="o", markersize=3, label=setting)
  ax.set_xlabel("simulated hours")
  ax.set_ylabel("test accuracy")
  ax.set_title("FedAvg on Fashion-MNIST, 100 clients, cohort 10 (seed 0)", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_bytes(records, path: pathlib.Path) -> None:
  """FedAvg's accuracy against the megabytes it uploaded, one point per compression setting
  (mean over seeds, sample std as error bars)."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.8))
  for setting in ("ideal", *[s for s in COMPRESSED if not s.startswith("deadline")]):
    accuracy = list(_values(records, "fedavg", setting, "accuracy").values())
    megabytes = list(_values(records, "fedavg", setting, "megabytes_up").values())
    if len(accuracy) < 2:
      continue
    ax.errorbar(
      np.mean(megabytes),
      100 * np.nanmean(accuracy),
      yerr=100 * np.nanstd(accuracy, ddof=1),
      marker="o",
      capsize=3,
      label=setting,
    )
  ax.set_xscale("log")
  ax.set_xlabel("MB uploaded over the run (as encoded)")
  ax.set_ylabel("test accuracy %")
  ax.set_title("FedAvg, compressed uploads (mean ± sample std over seeds)", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = grid.reproduction_parser(__doc__, HERE, "runs/systems")
  parser.set_defaults(seeds=[0, 1, 2, 3, 4])
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
  args = grid.parse_reproduction_args(parser)
  results = pathlib.Path(args.out)
  results.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  if not args.summarize:
    run_all(args, results)
  records = grid.read_records(results)
  table = f"{summary_table(records)}\n```\n\nAgainst FedAvg in the same setting:\n\n```\n"
  table += same_setting_table(records)
  table += "\n```\n\nPartial work and error feedback:\n\n```\n" + effects_table(records)
  env = {"wall_seconds_this_invocation": round(time.perf_counter() - started, 1)}
  (results / "summary.md").write_text(f"```\n{table}\n```\n\n{json.dumps(env)}\n")
  plot_time_curves(results, results / "accuracy_vs_time.png")
  plot_bytes(records, results / "accuracy_vs_bytes.png")
  print(table)


if __name__ == "__main__":
  main()
