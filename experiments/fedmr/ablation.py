"""Why does FedMR trail FedAvg at alpha = 0.1? One seed (0), one change at a time to the reduced
CNN grid's config (``reduced.json``) or the MLP grid's (``mlp.json``).

  python experiments/fedmr/ablation.py cnn               # about 20 min on 2 CPU cores
  python experiments/fedmr/ablation.py mlp               # about 10 min
  python experiments/fedmr/ablation.py cnn --summarize   # the table from the committed runs

Each run's per-round metrics go to ``results/ablation_<model>/<change>_<method>.jsonl``; the
table reports the global accuracy (mean of the last 3 evaluations, as the grids) and the mean
pairwise cosine similarity of FedMR's trained slot models at the last round;
``results/ablation_<model>/accuracy.png`` draws the longest run's curves.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib

from fedjax_lab import grid, load_config

HERE = pathlib.Path(__file__).parent
CHANGES = {
  "cnn": (
    "reduced.json",
    [
      ("none (per-leaf recombination from round 0, lr 0.01, 50 rounds)", "none", []),
      ("per-layer recombination (`granularity=layer`)", "layer",
       ["algorithm.fedmr.granularity=layer"]),
      ("20 FedAvg rounds first (`first_stage_rounds=20`)", "first_stage",
       ["algorithm.fedmr.first_stage_rounds=20"]),
      ("lr 0.05", "lr0.05", ["local.learning_rate=0.05"]),
      ("100 rounds", "rounds100", ["rounds=100"]),
    ],
  ),
  "mlp": (
    "mlp.json",
    [
      ("none (per-leaf recombination from round 0, lr 0.05, 60 rounds)", "none", []),
      ("per-layer recombination (`granularity=layer`)", "layer",
       ["algorithm.fedmr.granularity=layer"]),
      ("20 FedAvg rounds first (`first_stage_rounds=20`)", "first_stage",
       ["algorithm.fedmr.first_stage_rounds=20"]),
      ("the paper's learning rate 0.01", "lr0.01", ["local.learning_rate=0.01"]),
      ("150 rounds", "rounds150", ["rounds=150"]),
      ("FEMNIST CNN (`femnist_cnn`), lr 0.01, 1 local epoch, 30 rounds", "femnist_cnn",
       ["model.name=femnist_cnn", "local.epochs=1", "local.learning_rate=0.01", "rounds=30"]),
    ],
  ),
}  # fmt: skip
FEDMR_ONLY = ("layer", "first_stage")  # changes to FedMR alone: FedAvg is the baseline's


def _methods(name: str) -> list[str]:
  return ["fedmr"] if name in FEDMR_ONLY else ["fedmr", "fedavg"]


def run_all(model: str, results: pathlib.Path) -> None:
  """Run (or read back from ``runs/``) every change and save its metrics in ``results``."""
  spec = importlib.util.spec_from_file_location("fedmr_reproduce", HERE / "reproduce.py")
  reproduce = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(reproduce)
  config_file, changes = CHANGES[model]
  for _, name, overrides in changes:
    path = str(HERE / config_file)
    base = load_config(path, [*overrides, f"out_dir=runs/fedmr_ablation_{model}/{name}"])
    variants = {m: reproduce.ALGORITHMS[m] for m in _methods(name)}
    curves, _ = grid.alpha_seed_curves(
      path, overrides, variants, [0.1], [0], pathlib.Path(base.out_dir)
    )
    for method in variants:
      grid.write_metrics_file(results / f"{name}_{method}.jsonl", curves[(0.1, method)][0])


def ablation_table(model: str, results: pathlib.Path) -> str:
  """The README's table of one model's ablation, from the saved runs."""
  lines = [
    "| change | FedMR | FedAvg | FedMR slot cosine at the end |",
    "|---|---|---|---|",
  ]
  for label, name, _ in CHANGES[model][1]:
    read = lambda method: grid.read_metrics_file(results / f"{name}_{method}.jsonl")
    fedmr = read("fedmr")
    fedavg = (
      "(unchanged)"
      if name in FEDMR_ONLY
      else f"{grid.last_evaluations(read('fedavg'), 'global_accuracy'):.4f}"
    )
    cosine = [r["client_cosine_similarity"] for r in fedmr if "client_cosine_similarity" in r][-1]
    accuracy = grid.last_evaluations(fedmr, "global_accuracy")
    lines.append(f"| {label} | {accuracy:.4f} | {fedavg} | {cosine:.4f} |")
  return "\n".join(lines)


def plot_longest(model: str, results: pathlib.Path) -> None:
  """FedMR's and FedAvg's global accuracy over the longest run of the ablation."""
  from fedjax_lab.plots import pyplot

  name = next(name for _, name, _ in CHANGES[model][1] if name.startswith("rounds"))
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.6))
  for method in ("fedmr", "fedavg"):
    rows = grid.read_metrics_file(results / f"{name}_{method}.jsonl")
    points = [(r["round"], r["global_accuracy"]) for r in rows if "global_accuracy" in r]
    ax.plot(*zip(*points), marker="o", markersize=3, label=method)
  ax.set_xlabel("round")
  ax.set_ylabel("global accuracy")
  ax.set_title(f"FedMR ablation ({model}, alpha 0.1, seed 0): {name}", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(results / "accuracy.png", dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("model", choices=list(CHANGES))
  parser.add_argument("--summarize", action="store_true", help="the table from results/ only")
  args = parser.parse_args()
  results = HERE / "results" / f"ablation_{args.model}"
  if not args.summarize:
    run_all(args.model, results)
    plot_longest(args.model, results)
  print(ablation_table(args.model, results))


if __name__ == "__main__":
  main()
