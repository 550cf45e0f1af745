"""The quickstart experiment (``make demo``): FedAvg, FedProx, SCAFFOLD, FedAdam, Local-only and
Centralized on one non-IID Fashion-MNIST federation, offline. Prints a results table and writes
each run's metrics plus a comparison plot under ``runs/quickstart/``.

  python experiments/quickstart/run.py [overrides...]      e.g. rounds=20 data.dirichlet.alpha=0.5
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from fedjax_lab import build_federation, load_config, run
from fedjax_lab.config import AlgorithmConfig, ServerConfig
from fedjax_lab.plots import pyplot
from fedjax_lab.tables import SUMMARY_COLUMNS, format_table, options_text, summary_row

HERE = pathlib.Path(__file__).parent
VARIANTS = {
  "fedavg": dict(algorithm=AlgorithmConfig("fedavg")),
  "fedprox": dict(algorithm=AlgorithmConfig("fedprox")),
  "scaffold": dict(algorithm=AlgorithmConfig("scaffold")),
  "fedadam": dict(
    algorithm=AlgorithmConfig("fedopt"), server=ServerConfig(optimizer="adam", learning_rate=0.01)
  ),
  "local": dict(algorithm=AlgorithmConfig("local")),
  "centralized": dict(algorithm=AlgorithmConfig("centralized")),
}


def plot_comparison(results: dict, path: pathlib.Path, title: str) -> None:
  plt = pyplot()

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
  for index, (name, result) in enumerate(results.items()):
    for ax, key in zip(axes, ("global_accuracy", "client_accuracy_mean")):
      points = [(r["round"], r[key]) for r in result.metrics if key in r]
      if points:
        ax.plot(*zip(*points), label=name, color=f"C{index}", linestyle="--" if index % 2 else "-")
  axes[0].set_title("global model, pooled test set", fontsize=9)
  axes[1].set_title("each client's model, own test split (mean)", fontsize=9)
  for ax in axes:
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("accuracy")
  axes[1].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(overrides: list[str]) -> None:
  base = load_config(str(HERE / "config.json"), overrides)
  out_root = pathlib.Path(base.out_dir)
  out_root.mkdir(parents=True, exist_ok=True)
  data = build_federation(base.data)
  print(f"federation: {json.dumps(data.summary())}")
  data.plot_label_distribution(out_root / "label_distribution.png")
  results = {}
  for name, changes in VARIANTS.items():
    config = dataclasses.replace(base, out_dir=str(out_root / name), **changes)
    results[name] = run(config, data=data, overwrite=True)  # the demo recomputes
  rows = [summary_row(name, result) for name, result in results.items()]
  table = format_table(rows, SUMMARY_COLUMNS)
  title = (
    f"{base.data.source}, {base.data.num_clients} clients, {base.data.partition} "
    f"{options_text(base.data.partition_options)}, {base.model.name}, cohort {base.cohort_size}"
  )
  print(f"\n{title}\n{table}")
  (out_root / "results.md").write_text(f"# {title}\n\n```\n{table}\n```\n")
  (out_root / "results.json").write_text(json.dumps(rows, indent=2))
  plot_comparison(results, out_root / "comparison.png", title)
  print(f"\nwrote {out_root}/results.md, results.json, comparison.png and one folder per run")


if __name__ == "__main__":
  main(sys.argv[1:])
