"""pFedLIA's private variant, end to end: influence as sign votes under randomized response,
against the per-vote epsilon, on the ``permuted`` benchmark (Fashion-MNIST, 100 clients in 4
latent groups by label permutation; ``reduced.json`` with ``benchmarks.json``'s overrides).

Every variant holds out a seeded random 20% of each client's examples for scoring. Variants per
seed: pFedLIA on the influence loss (the default, nothing private), on sign votes
without randomized response, and on sign votes each kept with probability
``e^eps / (1 + e^eps)`` for eps in 8, 4, 2, 1. Each client releases one vote per client
(100 votes) once, after the warm-up; the composed epsilon of those 100 votes about its own data
is the PLD composition of ``ops/accounting.randomized_response_epsilon`` at delta 1e-5 (the
``vote_epsilon_total`` metric). Per seed and variant: the clients' mean personalized accuracy
(the mean of the last 3 evaluations), its 10th percentile, the adjusted Rand index of the final
clusters against the true groups, and the number of clusters, in ``results/privacy/
per_seed.jsonl``; ``summary.md`` holds the table (mean ± sample std (n), and the paired accuracy
difference against votes without randomized response).

  python experiments/pfedlia/privacy.py                # about 25 min on 2 CPU cores
  python experiments/pfedlia/privacy.py --summarize    # the table from results/privacy/
"""

from __future__ import annotations

import json
import pathlib

from fedjax_lab import grid, load_config
from fedjax_lab.stats import format_paired, format_spread
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent
BENCHMARK = json.loads((HERE / "benchmarks.json").read_text())["permuted"]
# variant -> algorithm.pfedlia overrides
VARIANTS = {
  "loss": [],
  "votes, no RR": ["algorithm.pfedlia.influence=vote"],
  **{
    f"votes, eps {eps:g}": [
      "algorithm.pfedlia.influence=vote",
      f"algorithm.pfedlia.vote_epsilon={eps}",
    ]
    for eps in (8.0, 4.0, 2.0, 1.0)
  },
}
REFERENCE = "votes, no RR"


def run_all(args, results: pathlib.Path) -> None:
  records = []
  configs = {
    (variant, seed): load_config(
      args.config,
      BENCHMARK
      + args.set
      + overrides
      + [f"data.seed={seed}", f"seed={seed}", f"out_dir={args.runs}/seed{seed}/{folder(variant)}"],
    )
    for seed in args.seeds
    for variant, overrides in VARIANTS.items()
  }

  def report(key, metrics):
    variant, seed = key
    spent = [r["vote_epsilon_total"] for r in metrics if "vote_epsilon_total" in r]
    record = {
      "seed": seed,
      "variant": variant,
      "vote_epsilon": configs[key].algorithm.options.vote_epsilon or None,
      "epsilon_total": spent[-1] if spent else None,
      "accuracy": grid.last_evaluations(metrics, "client_accuracy_mean"),
      "accuracy_p10": grid.last_evaluations(metrics, "client_accuracy_p10"),
      "ari": grid.last_evaluations(metrics, "cluster_ari", 1),
      "clusters": grid.last_evaluations(metrics, "num_clusters", 1),
    }
    records.append(record)
    print(json.dumps(record), flush=True)

  grid.run_configs(configs, report)
  (results / "per_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def folder(variant: str) -> str:
  """A variant's run folder name (``"pfedlia, eps 1"`` -> ``pfedlia_eps1``)."""
  return variant.replace(", ", "_").replace(" ", "")


def privacy_table(records: list[dict]) -> str:
  """Per variant: epsilon per vote and composed over a client's votes, accuracy (points),
  10th percentile, ARI and clusters (mean ± sample std (n)), and the paired accuracy difference
  against votes without randomized response (95% t-interval)."""
  by = {(r["variant"], r["seed"]): r for r in records}
  seeds = sorted({r["seed"] for r in records})
  rows = []
  for variant in VARIANTS:
    runs = [by[(variant, s)] for s in seeds if (variant, s) in by]
    if not runs:
      continue
    accuracy = [r["accuracy"] * 100 for r in runs]
    reference = [by[(REFERENCE, r["seed"])]["accuracy"] * 100 for r in runs]
    total = runs[0]["epsilon_total"]
    rows.append(
      {
        "influence": variant,
        "eps per vote": f"{runs[0]['vote_epsilon']:g}" if runs[0]["vote_epsilon"] else "inf",
        "eps over its votes": f"{total:.1f}" if total is not None else "inf",
        "accuracy %": format_spread(accuracy),
        "p10 %": format_spread([r["accuracy_p10"] for r in runs], scale=100),
        "ARI": format_spread([r["ari"] for r in runs]),
        "clusters": format_spread([r["clusters"] for r in runs], digits=1),
        f"vs {REFERENCE} (95% CI)": "-"
        if variant == REFERENCE
        else format_paired(accuracy, reference, within=2),
      }
    )
  return format_table(rows, list(rows[0]))


def main() -> None:
  parser = grid.reproduction_parser(__doc__, HERE, "runs/pfedlia_privacy")
  parser.set_defaults(config=str(HERE / "reduced.json"), out=str(HERE / "results" / "privacy"))
  args = grid.parse_reproduction_args(parser)
  results = pathlib.Path(args.out)
  results.mkdir(parents=True, exist_ok=True)
  if not args.summarize:
    run_all(args, results)
  table = privacy_table(grid.read_records(results))
  (results / "summary.md").write_text(f"```\n{table}\n```\n")
  print(table)


if __name__ == "__main__":
  main()
