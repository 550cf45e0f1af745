"""Reduced-scale pFedLIA reproduction, offline, every client in every round.

Benchmarks (``benchmarks.json``, each a list of overrides of ``reduced.json``):
  permuted     Fashion-MNIST, 100 clients of 100 examples, 4 latent groups by label permutation
  rotated      the same clients, 4 groups by image rotation (0/90/180/270 degrees)
  dirichlet    Fashion-MNIST, 100 clients, Dirichlet(0.1) label skew (no true groups: no Oracle)
  shakespeare  next-character prediction (small Transformer), 30 (play, character) clients,
               groups = play genre (comedy, history, tragedy)

Variants (``VARIANTS``): pFedLIA central (agglomerative, threshold 0: the number of clusters is
not given), decentralized (positive-influence neighbourhoods), with re-clustering every 10
rounds, with local fine-tuning; the Oracle (FedAvg within the true groups); IFCA given the true
number of groups and IFCA at k = 8 (not given it); CFL (eps1, eps2 tuned by ``tune_cfl.py`` on
another benchmark and split); FedAvg; Local.

Each run's metrics go to ``results/per_run/<benchmark>/<variant>_seed<s>.jsonl`` (committed); the
tables (``--summarize``) are computed from those files only, per benchmark and variant: the
clients' mean personalized accuracy and its 10th percentile (mean of the last 3 evaluations),
the adjusted Rand index of the final clusters against the true groups and the final number of
clusters, each as mean ± sample std (n seeds); the change of the accuracy over the run's end
(the mean of the last 2 evaluations minus the 2 before, in points, averaged over seeds: "flat"
under 0.5); and each variant's accuracy minus pFedLIA central's, paired by seed (95%
t-interval); the mean seconds a round after the first (the influence round included); then
the paired differences of ``COMPARISONS``.

  python experiments/pfedlia/reproduce.py --benchmarks permuted dirichlet rotated   # 5 seeds
  python experiments/pfedlia/reproduce.py --benchmarks shakespeare --seeds 0 1 2
  python experiments/pfedlia/reproduce.py --summarize          # the tables from results/ only

A run whose metrics already hold every round (same config, in ``--runs``) is read back.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from fedjax_lab import build_federation, grid, load_config
from fedjax_lab.plots import plot_curves
from fedjax_lab.stats import format_paired, format_spread
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results" / "per_run"
BENCHMARKS = json.loads((HERE / "benchmarks.json").read_text())
# variant -> (registered method, its options changed from the config's)
VARIANTS = {
  "pfedlia": ("pfedlia", {}),
  "pfedlia_decentralized": ("pfedlia", {"clustering": "decentralized"}),
  "pfedlia_recluster": ("pfedlia", {"recluster_every": 10}),
  "pfedlia_finetune": ("pfedlia", {"finetune": True}),
  "oracle": ("oracle", {}),
  "ifca": ("ifca", {}),  # the true number of groups: benchmarks.json
  "ifca_k8": ("ifca", {"num_clusters": 8}),
  "cfl": ("cfl", {}),
  "fedavg": ("fedavg", {}),
  "local": ("local", {}),
}
REFERENCE = "pfedlia"
COMPARISONS = [  # (a, b): a - b, beside every variant minus REFERENCE
  ("oracle", "ifca_k8"),
  ("ifca_k8", "ifca"),
  ("pfedlia_decentralized", "local"),
  ("pfedlia_recluster", "local"),
  ("pfedlia_finetune", "local"),
  ("oracle", "fedavg"),
]
FLAT_POINTS = 0.5


def run_all(args) -> None:
  for benchmark in args.benchmarks:
    overrides = BENCHMARKS[benchmark] + args.set
    for seed in args.seeds:
      seeded = overrides + [f"data.seed={seed}", f"seed={seed}"]
      data = build_federation(load_config(args.config, seeded).data)
      for name in args.variants:
        if name == "oracle" and data.client_groups is None:
          continue
        config = dataclasses.replace(
          load_config(args.config, seeded + [f"out_dir={args.runs}/{benchmark}/seed{seed}/{name}"]),
          algorithm=grid.algorithm_variant(args.config, seeded, *VARIANTS[name]),
        )
        metrics, _ = grid.run_or_load(config, data)
        path = pathlib.Path(args.out) / benchmark / f"{name}_seed{seed}.jsonl"
        grid.write_metrics_file(path, metrics)
        accuracy = grid.last_evaluations(metrics, "client_accuracy_mean")
        print(f"{benchmark} seed {seed} {name}: accuracy {accuracy:.4f}", flush=True)


def read_runs(results: pathlib.Path = RESULTS) -> dict[tuple[str, str], dict[int, list[dict]]]:
  """``(benchmark, variant) -> {seed: metric rows}`` from ``results/<benchmark>/*.jsonl``."""
  runs: dict = {}
  for path in sorted(results.glob("*/*_seed*.jsonl")):
    name, _, seed = path.stem.rpartition("_seed")
    runs.setdefault((path.parent.name, name), {})[int(seed)] = grid.read_metrics_file(path)
  return runs


def _end_change(metrics: list[dict]) -> float:
  values = [100 * r["client_accuracy_mean"] for r in metrics if "client_accuracy_mean" in r]
  return float(np.mean(values[-2:]) - np.mean(values[-4:-2])) if len(values) >= 4 else np.nan


def _spread_or_dash(values, digits: int = 2) -> str:
  """``format_spread`` of the values, or "-" where the variant has no such metric."""
  return format_spread(values, digits=digits) if np.isfinite(values).any() else "-"


def _accuracy(metrics: list[dict]) -> float:
  """The clients' mean personalized accuracy (%), mean of the last 3 evaluations."""
  return 100 * grid.last_evaluations(metrics, "client_accuracy_mean")


def _paired(a: dict[int, list[dict]], b: dict[int, list[dict]]) -> str:
  """Accuracy of ``a`` minus ``b`` over their common seeds (95% t-interval); "-" under 2."""
  seeds = sorted(set(a) & set(b))
  if len(seeds) < 2:
    return "-"
  return format_paired([_accuracy(a[s]) for s in seeds], [_accuracy(b[s]) for s in seeds], within=2)


def summary_tables(runs) -> str:
  """The tables of the module docstring, one block per benchmark, and the ``COMPARISONS``
  present, as markdown."""
  out, comparisons = [], []
  for benchmark in [b for b in BENCHMARKS if any(key[0] == b for key in runs)]:
    rows = []
    reference = runs.get((benchmark, REFERENCE), {})
    for name in [n for n in VARIANTS if (benchmark, n) in runs]:
      by_seed = runs[(benchmark, name)]

      def final(key, count=3, by=by_seed):
        return [grid.last_evaluations(metrics, key, count) for metrics in by.values()]

      change = np.nanmean([_end_change(m) for m in by_seed.values()])
      seconds = [r["round_seconds"] for m in by_seed.values() for r in m[1:]]
      rows.append(
        {
          "variant": name,
          "accuracy %": format_spread([_accuracy(m) for m in by_seed.values()]),
          "p10 %": format_spread(final("client_accuracy_p10"), scale=100),
          "ARI": _spread_or_dash(final("cluster_ari", 1)),
          "clusters": _spread_or_dash(final("num_clusters", 1), digits=1),
          "end change": f"{change:+.2f}" + (" flat" if abs(change) < FLAT_POINTS else ""),
          "s / round": f"{np.mean(seconds):.2f}",
          f"minus {REFERENCE} (95% CI)": "-" if name == REFERENCE else _paired(by_seed, reference),
        }
      )
    comparisons += [
      {"benchmark": benchmark, "difference": f"{a} - {b}", "accuracy (95% CI)": difference}
      for a, b in COMPARISONS
      if (difference := _paired(runs.get((benchmark, a), {}), runs.get((benchmark, b), {}))) != "-"
    ]
    rounds = max(r["round"] for by in runs[(benchmark, rows[0]["variant"])].values() for r in by)
    out.append(
      f"{benchmark}: clients' mean personalized accuracy (%) at the {rounds}-round budget\n\n```\n"
      + format_table(rows, list(rows[0]))
      + "\n```\n"
    )
  if comparisons:
    out.append(
      "Other pairs, paired by seed (points)\n\n```\n"
      + format_table(comparisons, list(comparisons[0]))
      + "\n```\n"
    )
  return "\n".join(out)


def main() -> None:
  parser = grid.reproduction_parser(__doc__, HERE, "runs/pfedlia_reduced")
  parser.set_defaults(config=str(HERE / "reduced.json"), out=str(RESULTS), seeds=[0, 1, 2, 3, 4])
  parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=BENCHMARKS)
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
  args = grid.parse_reproduction_args(parser)
  results = pathlib.Path(args.out)
  if not args.summarize:
    run_all(args)
  runs = read_runs(results)
  tables = summary_tables(runs)
  (results / "summary.md").write_text(tables)
  benchmarks = [b for b in BENCHMARKS if any(key[0] == b for key in runs)]
  curves = {key: list(by_seed.values()) for key, by_seed in runs.items()}
  names = [n for n in VARIANTS if any((b, n) in runs for b in benchmarks)]
  panels = grid.curve_panels(curves, benchmarks, names, "client_accuracy_mean")
  plot_curves(panels, results / "accuracy.png", "clients' mean personalized accuracy")
  print(tables)


if __name__ == "__main__":
  main()
