"""The personalized baselines beside pFedLIA and the clustered methods, on pFedLIA's benchmarks
(``../pfedlia/benchmarks.json`` over ``../pfedlia/reduced.json``: 100 Fashion-MNIST clients,
every client in every round; ``permuted`` and ``rotated`` have 4 latent groups and 100 examples
a client, ``dirichlet`` is Dirichlet(0.1) label skew on up to 200), the same federations and
seeds (0-4) as ``experiments/pfedlia``, whose committed runs (pFedLIA, Oracle, IFCA, CFL,
FedAvg, Local) are read from ``../pfedlia/results/per_run`` and ranked with these; and on this
folder's own benchmarks (``benchmarks.json``: Dirichlet(0.5) label skew and two-class shards,
clients of up to 200 examples, no latent groups), where pFedLIA, IFCA, CFL, FedAvg and Local
(``CLUSTERED``, with pFedLIA's settings) are run here too.

Methods run here (``METHODS``): FedAvg-FT (FedAvg, each client's copy adapted for one epoch
before its test), Per-FedAvg (FO, adapted the same way), Ditto, FedPer, FedRep, LG-FedAvg,
APFL, pFedMe and FedALA, each with its own setting chosen by ``tune.py`` on data seed 100 (the
same 3-candidate budget for each). FedBN does not apply: the benchmarks' MLP has no
normalization layer. A run's value is the clients' mean accuracy of the model each client would
use (the adapted one for FedAvg-FT and Per-FedAvg), mean of the last 3 evaluations, at the
benchmark's round budget.

Tables (``--summarize``, from the committed per-run files only): per benchmark and method the
accuracy and its 10th percentile across clients, mean ± sample std (n seeds), the rank by mean,
and the paired differences with pFedLIA and with Local by seed (95% t-interval). The rank is
by mean; neighbours whose intervals overlap are not measurably apart.

  python experiments/personalized/reproduce.py              # 275 runs, about 4.5 h in one process
  python experiments/personalized/reproduce.py --benchmarks shards --seeds 0 1
  python experiments/personalized/reproduce.py --summarize  # the tables from results/ only
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from fedjax_lab import grid, sweep
from fedjax_lab.stats import format_paired, format_spread
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent
PFEDLIA = HERE.parent / "pfedlia"
RESULTS = HERE / "results" / "per_run"
PFEDLIA_BENCHMARKS = json.loads((PFEDLIA / "benchmarks.json").read_text())
OWN_BENCHMARKS = json.loads((HERE / "benchmarks.json").read_text())
BENCHMARKS = {**PFEDLIA_BENCHMARKS, **OWN_BENCHMARKS}
ADAPTED = {"fedavg_ft", "per_fedavg"}  # evaluated after one epoch of local adaptation
METHODS = (
  "fedavg_ft",
  "per_fedavg",
  "ditto",
  "fedper",
  "fedrep",
  "lg_fedavg",
  "apfl",
  "pfedme",
  "fedala",
)
PFEDLIA_RUNS = ("pfedlia", "oracle", "ifca", "ifca_k8", "cfl", "fedavg", "local")
CLUSTERED = ("pfedlia", "ifca", "cfl", "fedavg", "local")  # run here on OWN_BENCHMARKS
REFERENCE = "pfedlia"


def method_changes(tuned: dict[str, str]) -> dict[str, list[str]]:
  """Each method's overrides: its name, its tuned setting (``tune.chosen``) and local
  adaptation at evaluation where it is evaluated adapted."""
  changes = {}
  for method in METHODS + CLUSTERED:
    name = "fedavg" if method == "fedavg_ft" else method
    overrides = [f"algorithm.name={name}"]
    if method in tuned:
      overrides.append(f"algorithm.{name}.{tuned[method]}")
    if method in ADAPTED:
      overrides.append("eval_finetune_epochs=1")
    changes[method] = overrides
  return changes


def run_all(args) -> None:
  from tune import (
    chosen,
  )  # this folder's tuning script (run as a script, its folder is on the path)

  tuned = chosen(grid.read_records(HERE / "results" / "tuning"))
  # --set comes last: it overrides the benchmark's own settings too (a test's tiny runs)
  changes = {m: c + args.set for m, c in method_changes(tuned).items()}
  planned = []
  for benchmarks, names in ((PFEDLIA_BENCHMARKS, METHODS), (OWN_BENCHMARKS, METHODS + CLUSTERED)):
    chosen_benchmarks = {b: o for b, o in benchmarks.items() if b in args.benchmarks}
    methods = {m: changes[m] for m in names if m in args.methods}
    if chosen_benchmarks and methods:
      axes = [
        sweep.variants_axis("benchmark", chosen_benchmarks),
        sweep.variants_axis("method", methods),
      ]
      planned += sweep.plan(args.config, [], axes, args.seeds, pathlib.Path(args.runs))

  def save(run, rows, read_back, seconds):
    benchmark, method = (value for _, value in run.cell.values)
    grid.write_metrics_file(
      pathlib.Path(args.out) / benchmark / f"{method}_seed{run.seed}.jsonl", rows
    )
    print(f"{benchmark} {method} seed {run.seed}: {_accuracy(method, rows):.2f} "
          f"({'read back' if read_back else f'{seconds:.0f} s'})", flush=True)  # fmt: skip

  sweep.execute(planned, 1, "", save)


def _metric(method: str, key: str) -> str:
  return f"adapted_{key}" if method in ADAPTED else key


def _accuracy(method: str, rows: list[dict]) -> float:
  """The clients' mean accuracy (%) of the models they would use, last 3 evaluations."""
  return 100 * grid.last_evaluations(rows, _metric(method, "client_accuracy_mean"))


def read_runs(results: pathlib.Path) -> dict[tuple[str, str], dict[int, list[dict]]]:
  """``(benchmark, method) -> {seed: rows}``: the runs in ``results`` and pFedLIA's committed
  ones."""
  runs: dict = {}
  here = METHODS + CLUSTERED
  for folder, names in ((results, here), (PFEDLIA / "results" / "per_run", PFEDLIA_RUNS)):
    for path in sorted(folder.glob("*/*_seed*.jsonl")):
      name, _, seed = path.stem.rpartition("_seed")
      if name in names:
        runs.setdefault((path.parent.name, name), {})[int(seed)] = grid.read_metrics_file(path)
  return runs


def _paired(name: str, by_seed: dict, other: str, other_runs: dict) -> str:
  """``name``'s accuracy minus ``other``'s over their common seeds (95% t-interval, the seed
  standard's marker); "-" for ``other`` itself or under 2 common seeds."""
  seeds = sorted(set(by_seed) & set(other_runs))
  if name == other or len(seeds) < 2:
    return "-"
  a = [_accuracy(name, by_seed[s]) for s in seeds]
  return format_paired(a, [_accuracy(other, other_runs[s]) for s in seeds], within=2)


def summary_tables(runs) -> str:
  """The tables of the module docstring, one per benchmark, as markdown."""
  out = []
  for benchmark in [b for b in BENCHMARKS if (b, REFERENCE) in runs]:
    names = [n for n in PFEDLIA_RUNS + METHODS if (benchmark, n) in runs]
    if not any(n in METHODS for n in names):
      continue
    reference, local = runs[(benchmark, REFERENCE)], runs.get((benchmark, "local"), {})
    means = {n: np.nanmean([_accuracy(n, r) for r in runs[(benchmark, n)].values()]) for n in names}
    order = sorted(names, key=lambda n: -means[n])
    rows = []
    for name in order:
      by_seed = runs[(benchmark, name)]
      p10_key = _metric(name, "client_accuracy_p10")
      p10 = [grid.last_evaluations(r, p10_key) for r in by_seed.values()]
      rows.append({
        "rank": order.index(name) + 1,
        "method": name + (" (adapted)" if name in ADAPTED else ""),
        "accuracy %": format_spread([_accuracy(name, r) for r in by_seed.values()]),
        "p10 %": format_spread(p10, scale=100),
        f"minus {REFERENCE} (95% CI)": _paired(name, by_seed, REFERENCE, reference),
        "minus local (95% CI)": _paired(name, by_seed, "local", local),
      })  # fmt: skip
    rounds = max(r["round"] for r in reference[min(reference)])
    out.append(
      f"{benchmark}: clients' mean accuracy (%) of the model each uses, {rounds}-round budget\n\n"
      f"```\n{format_table(rows, list(rows[0]))}\n```\n"
    )
  return "\n".join(out)


def main() -> None:
  parser = grid.reproduction_parser(__doc__, HERE, "runs/personalized")
  parser.set_defaults(config=str(PFEDLIA / "reduced.json"), out=str(RESULTS), seeds=[0, 1, 2, 3, 4])
  defaults = ["permuted", "rotated", "dirichlet", *OWN_BENCHMARKS]
  parser.add_argument("--benchmarks", nargs="+", default=defaults, choices=BENCHMARKS)
  every = METHODS + CLUSTERED
  parser.add_argument("--methods", nargs="+", default=list(every), choices=every)
  args = grid.parse_reproduction_args(parser)
  if not args.summarize:
    run_all(args)
  results = pathlib.Path(args.out)
  tables = summary_tables(read_runs(results))
  results.mkdir(parents=True, exist_ok=True)
  (results / "summary.md").write_text(tables)
  print(tables)


if __name__ == "__main__":
  main()
