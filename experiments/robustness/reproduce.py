"""Accuracy under malicious clients: every attack against every aggregation rule.

FedAvg on non-IID Fashion-MNIST (``base.json``). For each attack (``ATTACKS``: model
poisoning of a random share of each cohort, or label flipping by a fixed share of clients),
each malicious fraction (``FRACTIONS``) and each aggregation rule (``RULES``), 3 seeds (data
split and training); the 0% column is each rule without an attack. Accuracy: the global model
on the test set at the round budget (mean of the last 2 evaluations). Results: a table per
attack (rule x fraction: mean ± sample std) and ``heatmap.png``.

  python experiments/robustness/reproduce.py                 # about 2 h on 2 CPU cores
  python experiments/robustness/reproduce.py --summarize     # the tables from results/
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
from fedjax_lab.plots import pyplot
from fedjax_lab.stats import format_paired, format_spread
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent
# name -> (attack.kind, attack.strength)
ATTACKS = {
  "sign_flip": ("sign_flip", 4.0),
  "scale": ("scale", 10.0),
  "gaussian": ("gaussian", 1.0),
  "alie": ("alie", 0.0),
  "label_flip": ("label_flip", 0.0),
}
FRACTIONS = (0.1, 0.2, 0.3)
RULES = ("mean", "median", "trimmed_mean", "krum", "geometric_median", "centered_clip")


def rule_aggregation(args, base, rule: str):
  """The aggregation section with ``rule`` selected, its options from the config file's
  ``aggregation.<rule>`` table (and ``--set``); Krum's ``f``: the attackers it must tolerate per
  cohort at the largest fraction."""
  overrides = [*args.set, f"aggregation.rule={rule}"]
  if rule in ("krum", "multi_krum"):
    byzantine = max(1, int(max(FRACTIONS) * base.cohort_size))
    overrides.append(f"aggregation.{rule}.byzantine={byzantine}")
  return load_config(args.config, overrides).aggregation


def _variant(base, aggregation, attack: str | None, fraction: float):
  """``base`` with ``aggregation``, under ``attack`` at ``fraction`` (None: no attack)."""
  if attack is None:
    return dataclasses.replace(base, aggregation=aggregation)
  kind, strength = ATTACKS[attack]
  return dataclasses.replace(
    base,
    aggregation=aggregation,
    attack=dataclasses.replace(base.attack, kind=kind, fraction=fraction, strength=strength),
  )


def grid_cells(attacks, fractions, rules):
  """``(attack or None, fraction, rule)`` of every run: each rule once without an attack."""
  cells = [(None, 0.0, rule) for rule in rules]
  return cells + [(a, f, r) for a in attacks for f in fractions for r in rules]


def run_all(args, base, results: pathlib.Path) -> None:
  records = grid.read_records(results)
  per_seed = results / "per_seed.jsonl"
  done = {(r["attack"], r["fraction"], r["rule"], r["seed"]) for r in records}
  started = time.perf_counter()
  configs = {
    (attack, fraction, rule, seed): dataclasses.replace(
      _variant(base, rule_aggregation(args, base, rule), attack, fraction),
      data=dataclasses.replace(base.data, seed=seed),
      seed=seed,
      out_dir=str(
        pathlib.Path(args.runs) / f"seed{seed}" / f"{attack or 'none'}_{fraction}_{rule}"
      ),
    )
    for seed in args.seeds
    for attack, fraction, rule in grid_cells(args.attacks, args.fractions, args.rules)
    if (attack, fraction, rule, seed) not in done
  }

  def report(key, metrics):
    attack, fraction, rule, seed = key
    accuracy = float("nan")
    if not grid.diverged(metrics):
      accuracy = grid.last_evaluations(metrics, "global_accuracy", count=2)
    record = {"attack": attack, "fraction": fraction, "rule": rule, "seed": seed}
    records.append({**record, "accuracy": None if np.isnan(accuracy) else accuracy})
    per_seed.write_text("".join(json.dumps(r) + "\n" for r in records))  # after every run
    print(json.dumps(records[-1]), flush=True)

  grid.run_configs(configs, report)
  env = {
    "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
    "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}",
    "python": platform.python_version(),
    "jax": jax.__version__,
    "config": base.to_dict(),
  }
  (results / "environment.json").write_text(json.dumps(env, indent=1))


def _accuracy(records, attack, fraction, rule) -> dict[int, float]:
  """seed -> accuracy in points (NaN: diverged)."""
  return {
    r["seed"]: np.nan if r["accuracy"] is None else 100 * r["accuracy"]
    for r in records
    if r["attack"] == attack and r["fraction"] == fraction and r["rule"] == rule
  }


def summary_tables(records) -> str:
  """Per attack: rule x fraction, accuracy mean ± sample std (n), and at the largest fraction
  the paired difference against the same rule without attack."""
  rules = [r for r in RULES if any(x["rule"] == r for x in records)]
  attacks = [a for a in ATTACKS if any(x["attack"] == a for x in records)]
  blocks = []
  for attack in attacks:
    fractions = sorted({x["fraction"] for x in records if x["attack"] == attack})
    rows = []
    for rule in rules:
      clean = _accuracy(records, None, 0.0, rule)
      row = {"rule": rule, "0%": format_spread(list(clean.values()), digits=1)}
      for fraction in fractions:
        row[f"{fraction:.0%}"] = format_spread(
          list(_accuracy(records, attack, fraction, rule).values()), digits=1
        )
      worst = _accuracy(records, attack, fractions[-1], rule)
      seeds = sorted(set(worst) & set(clean))
      row[f"{fractions[-1]:.0%} vs 0%, pts (95% CI)"] = format_paired(
        [worst[s] for s in seeds], [clean[s] for s in seeds], digits=1, within=2
      )
      rows.append(row)
    table = format_table(rows, list(rows[0]))
    blocks.append(f"### {attack}\n\n```\n{table}\n```\n")
  return "\n".join(blocks)


def _finite_mean(values) -> float:
  finite = [v for v in values if np.isfinite(v)]
  return float(np.mean(finite)) if finite else float("nan")


def plot_heatmap(records, path: pathlib.Path) -> None:
  """Mean accuracy, rules down, (attack, fraction) across; the 0% column first."""
  plt = pyplot()

  rules = [r for r in RULES if any(x["rule"] == r for x in records)]
  columns = [(None, 0.0)] + sorted(
    {(x["attack"], x["fraction"]) for x in records if x["attack"] is not None},
    key=lambda c: (list(ATTACKS).index(c[0]), c[1]),
  )
  values = np.array(
    [[_finite_mean(_accuracy(records, a, f, r).values()) for a, f in columns] for r in rules]
  )
  fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(columns), 0.5 + 0.45 * len(rules)))
  image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
  for (i, j), value in np.ndenumerate(values):
    if np.isnan(value):  # every seed diverged (or none ran): a blank cell
      ax.text(j, i, "div.", ha="center", va="center", fontsize=6, color="black")
    else:
      ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6, color="white")
  ax.set_yticks(range(len(rules)), rules, fontsize=7)
  labels = ["none" if a is None else f"{a} {f:.0%}" for a, f in columns]
  ax.set_xticks(range(len(columns)), labels, rotation=90, fontsize=7)
  fig.colorbar(image, ax=ax, label="test accuracy %")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = grid.reproduction_parser(__doc__, HERE, "runs/robustness")
  parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
  parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
  parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
  args = grid.parse_reproduction_args(parser)
  results = pathlib.Path(args.out)
  results.mkdir(parents=True, exist_ok=True)
  if not args.summarize:
    run_all(args, load_config(args.config, args.set), results)
  records = grid.read_records(results)
  text = summary_tables(records)
  (results / "summary.md").write_text(text)
  plot_heatmap(records, results / "heatmap.png")
  print(text)


if __name__ == "__main__":
  main()
