"""WorldLM against its baselines on a CPU-scale world of text federations (README.md).

Three federations (drama, code, prose), three sub-federations each, three clients (documents)
per sub-federation: 27 clients, byte-level next-byte prediction with a 46k-parameter decoder
(``byte_lm``), every client every round, 5 local AdamW steps of batch 8 (``base.json``). Parts:

- ``main``: WorldLM, FedAvg, HierFAVG, FedPer, federation-local and centralized (one model on
  the pooled data, 5 x 27 steps a round: the same examples per round);
- ``dp``: FedAvg and WorldLM with DP at the federation boundary (clipping and noise);
- ``keys``: WorldLM with other key layers than the last block.

Seeds: seed ``s`` draws the documents (``data.seed``) and trains (``seed``). Reported:
each client's perplexity on its own held-out windows under the model it would use, pooled
per federation and overall, at the last evaluation (the round budget, named as such).

  python experiments/worldlm/reproduce.py                       # about 70 min on 2 CPU cores
  python experiments/worldlm/reproduce.py --parts main          # one part
  python experiments/worldlm/reproduce.py --summarize           # the tables from results/
"""

from __future__ import annotations

import json
import pathlib
import platform
import time

import jax
import numpy as np

from fedjax_lab import build_federation, checkpoint, grid, load_config, run_folder
from fedjax_lab.build import build_experiment
from fedjax_lab.data.tree import FederationTree
from fedjax_lab.plots import pyplot
from fedjax_lab.stats import describe, paired_difference
from fedjax_lab.tables import format_table

HERE = pathlib.Path(__file__).parent
FEDERATIONS = ("drama", "code", "prose")
LOCAL_STEPS, CLIENTS = 5, 27
METHODS = {
  "worldlm": ["algorithm.worldlm.variant=worldlm"],
  "fedavg": ["algorithm.worldlm.variant=fedavg"],
  "hierfavg": ["algorithm.worldlm.variant=hierfavg"],
  "fedper": ["algorithm.worldlm.variant=fedper"],
  "federation_local": ["algorithm.worldlm.variant=federation_local"],
  "centralized": ["algorithm.name=centralized", f"local.steps={LOCAL_STEPS * CLIENTS}"],
}
DP_NOISE = (0.02, 0.05)
DP_CLIP = 1.0
DP_METHODS = ("fedavg", "worldlm")
KEY_CHOICES = {"first_block": "block0", "embeddings": "embed,position", "attention": "attention"}
PAPER_RATIOS = {"fedavg": 1.91, "hierfavg": 1.86, "fedper": 3.3, "centralized": 1.39}


def grid_configs(parts, only=()) -> list[tuple[str, str, list[str]]]:
  """``(part, name, overrides)`` of every run of ``parts`` (of the names in ``only``, if
  given)."""
  configs = []
  if "main" in parts:
    configs += [("main", name, overrides) for name, overrides in METHODS.items()]
  if "dp" in parts:
    for z in DP_NOISE:
      for name in DP_METHODS:
        dp = [
          f"algorithm.worldlm.dp_noise_multiplier={z}",
          f"algorithm.worldlm.dp_clip_norm={DP_CLIP}",
        ]
        configs.append(("dp", f"{name}_z{z}", METHODS[name] + dp))
  if "keys" in parts:
    for name, layers in KEY_CHOICES.items():
      configs.append(("keys", name, [f"algorithm.worldlm.key_layers={layers}"]))
  return [entry for entry in configs if not only or entry[1] in only]


def _config(args, seed: int, name: str, overrides: list[str]):
  algorithm = [] if "algorithm.name=centralized" in overrides else ["algorithm.name=worldlm"]
  return load_config(
    args.config,
    args.set
    + [f"data.seed={seed}", f"seed={seed}", f"out_dir={args.runs}/seed{seed}/{name}"]
    + algorithm
    + overrides,
  )


def _record(part, name, seed, config, metrics) -> dict:
  record = {"part": part, "method": name, "seed": seed, "rounds": config.rounds}
  record["train_seconds"] = round(sum(row.get("round_seconds", 0.0) for row in metrics), 1)
  if grid.diverged(metrics):
    return {**record, "diverged": True}
  evaluated = [row for row in metrics if "client_perplexity" in row]
  last, earlier = evaluated[-1], [r for r in evaluated if r["round"] <= config.rounds - 50]
  record["perplexity"] = last["client_perplexity"]
  for federation in FEDERATIONS:
    record[f"perplexity/{federation}"] = last[f"client_perplexity/{federation}"]
  if earlier:  # how flat the curve is: the relative change over the last 50 rounds
    record["change_last_50"] = last["client_perplexity"] / earlier[-1]["client_perplexity"] - 1
  for key in ("privacy_epsilon", "privacy_epsilon_pld"):
    if key in metrics[-1]:
      record[key] = metrics[-1][key]
  return record


def attention_weights(config, data) -> dict:
  """The final WorldLM state's attention, restored from the run's last checkpoint:
  ``{"names": node names, "received": [num_nodes], "exchange": [num_nodes, num_nodes]}``."""
  experiment = build_experiment(config, data)
  init_key, rounds_key = jax.random.split(jax.random.key(config.seed))
  like = experiment.algorithm.init(init_key)
  manager = checkpoint.manager(pathlib.Path(config.out_dir) / run_folder.CHECKPOINT_DIR)
  state, _, _ = checkpoint.restore(manager, like, rounds_key)
  manager.close()
  tree = FederationTree.from_paths(experiment.data.client_paths)
  return {
    "names": list(tree.names),
    "parent_of": tree.parent_of.tolist(),
    "received": np.asarray(state.attention).round(4).tolist(),
    "exchange": np.asarray(state.exchange).round(4).tolist(),
  }


def plot_world(data, path: pathlib.Path) -> None:
  """The federation tree of one seed's documents, with clients and training tokens per node."""
  tokens = data.train_num_examples * data.train.x.shape[-1]
  FederationTree.from_paths(data.client_paths).plot(path, tokens_per_client=tokens)


def run_one(part, name, seed, config, data, records: list, results: pathlib.Path) -> None:
  """Run (or read back) one config; append its record and rewrite ``per_seed.jsonl``."""
  metrics, _ = grid.run_or_load(config, data)
  record = _record(part, name, seed, config, metrics)
  records.append(record)
  (results / "per_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  print(json.dumps(record), flush=True)
  if part == "main" and name == "worldlm":
    path = results / f"attention_seed{seed}.json"
    path.write_text(json.dumps(attention_weights(config, data)))


def run_all(args, results: pathlib.Path) -> None:
  records = grid.read_records(results)
  done = {(r["part"], r["method"], r["seed"]) for r in records}
  started = time.perf_counter()
  federations = {}  # seed -> its federation, built once
  for part in args.parts:  # part by part, so an interrupted invocation leaves whole parts
    for seed in args.seeds:
      for _, name, overrides in grid_configs([part], args.only):
        config = _config(args, seed, name, overrides)
        if (part, name, seed) in done:
          continue
        if seed not in federations:
          federations[seed] = build_federation(config.data)
          plot_world(federations[seed], results / f"tree_seed{seed}.png")
        run_one(part, name, seed, config, federations[seed], records, results)
  env = {
    "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
    "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}",
    "python": platform.python_version(),
    "jax": jax.__version__,
    "config": load_config(args.config, args.set).to_dict(),
  }
  (results / "environment.json").write_text(json.dumps(env, indent=1))


def _by(records, part):
  return {(r["method"], r["seed"]): r for r in records if r["part"] == part}


def _paired(a, b) -> str:
  """``a - b`` paired by seed: mean, 95% t-interval and the verdict; an undecided comparison on
  fewer than 5 seeds says it is below ``docs/reproducing.md``'s standard."""
  diff = paired_difference(np.asarray(a), np.asarray(b))
  text = f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}] {diff['verdict']}"
  if diff["n"] < 5 and diff["verdict"] == "no measurable difference":
    text += f" ({diff['n']} seeds, below the standard)"
  return text


def _cell(values) -> str:
  d = describe(values)
  return f"{d['mean']:.2f} ± {d['std']:.2f}"


def main_table(records) -> str:
  """Perplexity per federation and method (mean ± sample std over seeds, n seeds) and the
  paired comparison with WorldLM."""
  by = _by(records, "main")
  seeds = sorted({s for (m, s) in by if m == "worldlm"})
  if not seeds:
    return "(no WorldLM run)"
  world = np.array([by[("worldlm", s)]["perplexity"] for s in seeds])
  rows = []
  for method in METHODS:
    if not all((method, s) in by for s in seeds):
      continue
    runs = [by[(method, s)] for s in seeds]
    row = {"method": method}
    for federation in FEDERATIONS:
      row[federation] = _cell([r[f"perplexity/{federation}"] for r in runs])
    row["all"] = _cell([r["perplexity"] for r in runs]) + f" (n={len(runs)})"
    row["bits/byte"] = f"{np.mean([np.log2(r['perplexity']) for r in runs]):.3f}"
    row["flat: change last 50"] = f"{np.mean([r.get('change_last_50', np.nan) for r in runs]):+.1%}"
    if method != "worldlm":
      other = np.array([r["perplexity"] for r in runs])
      ratio = describe(other / world)
      row["baseline/WorldLM"] = f"{ratio['mean']:.3f}x ± {ratio['std']:.3f}"
      row["paper"] = f"{PAPER_RATIOS[method]}x" if method in PAPER_RATIOS else "-"
      row["WorldLM - baseline (95% CI)"] = _paired(world, other)
    rows.append(row)
  return format_table(rows, list(dict.fromkeys(k for row in rows for k in row)))


def dp_table(records) -> str:
  """Each DP run against the same method without noise: perplexity and epsilon."""
  main, by = _by(records, "main"), _by(records, "dp")
  rows = []
  for z in DP_NOISE:
    for method in DP_METHODS:
      name = f"{method}_z{z}"
      seeds = sorted(s for (m, s) in by if m == name)
      if not seeds:
        continue
      runs = [by[(name, s)] for s in seeds]
      row = {"method": method, "noise z": z, "clip C": DP_CLIP}
      finished = [r for r in runs if not r.get("diverged")]
      row["diverged"] = f"{len(runs) - len(finished)}/{len(runs)}"
      if finished:
        row["perplexity"] = _cell([r["perplexity"] for r in finished]) + f" (n={len(finished)})"
        clean = [
          main[(method, r["seed"])]["perplexity"] for r in finished if (method, r["seed"]) in main
        ]
        if len(clean) == len(finished):
          ratio = describe(np.array([r["perplexity"] for r in finished]) / np.array(clean))
          row["vs no DP"] = f"{ratio['mean']:.2f}x ± {ratio['std']:.2f}"
        if "privacy_epsilon" in finished[0]:
          pld = finished[0].get("privacy_epsilon_pld")
          epsilon = finished[0]["privacy_epsilon"]
          row["epsilon RDP / PLD"] = f"{epsilon:.3g} / {'-' if pld is None else f'{pld:.3g}'}"
          row["guarantee"] = "none (epsilon > 10)" if epsilon > 10 else "epsilon <= 10"
      rows.append(row)
  table = format_table(rows, list(dict.fromkeys(k for row in rows for k in row)))
  for z in DP_NOISE:  # does WorldLM degrade less than FedAvg? paired by seed
    ratios = {}
    for method in ("fedavg", "worldlm"):
      runs = {s: r for (m, s), r in by.items() if m == f"{method}_z{z}" and not r.get("diverged")}
      ratios[method] = {
        s: r["perplexity"] / main[(method, s)]["perplexity"] for s, r in runs.items()
      }
    seeds = sorted(set(ratios["fedavg"]) & set(ratios["worldlm"]))
    if seeds:
      paired = _paired([ratios["worldlm"][s] for s in seeds], [ratios["fedavg"][s] for s in seeds])
      table += f"\nz = {z}: WorldLM's 'vs no DP' minus FedAvg's, paired by seed: {paired}"
  return table


def keys_table(records) -> str:
  """WorldLM's perplexity with each choice of key layers (the last block is the default)."""
  main, by = _by(records, "main"), _by(records, "keys")
  rows = []
  choices = {"last_block (default)": None, **KEY_CHOICES}
  for label, layers in choices.items():
    source, name = (main, "worldlm") if layers is None else (by, label)
    seeds = sorted(s for (m, s) in source if m == name)
    if not seeds:
      continue
    runs = [source[(name, s)] for s in seeds]
    row = {"key layers": label, "parameters": layers or "block1"}
    for federation in FEDERATIONS:
      row[federation] = _cell([r[f"perplexity/{federation}"] for r in runs])
    row["all"] = _cell([r["perplexity"] for r in runs]) + f" (n={len(runs)})"
    if layers is not None and all(("worldlm", s) in main for s in seeds):
      row["minus last_block (95% CI)"] = _paired(
        [r["perplexity"] for r in runs], [main[("worldlm", s)]["perplexity"] for s in seeds]
      )
    rows.append(row)
  return format_table(rows, list(dict.fromkeys(k for row in rows for k in row)))


def plot_attention(results: pathlib.Path) -> None:
  """``attention.png`` from seed 0: each sub-federation's softmax over its clients and itself,
  and the residual exchange between sub-federations across federations."""
  plt = pyplot()

  path = results / "attention_seed0.json"
  if not path.exists():
    return
  weights = json.loads(path.read_text())
  names, parents = weights["names"], np.array(weights["parent_of"])
  received, exchange = np.array(weights["received"]), np.array(weights["exchange"])
  depth = np.array([name.count("/") + 1 for name in names])
  depth[0] = 0
  subs = [v for v in range(len(names)) if depth[v] == 2]
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
  width = max(int((parents[1:][:, None] == np.array(subs)[None]).sum(0).max()), 1)
  grid_values = np.full((len(subs), width + 1), np.nan)
  for row, sub in enumerate(subs):
    children = np.flatnonzero(parents == sub)
    grid_values[row, : len(children)] = received[children]
    grid_values[row, width] = 1 - received[children].sum()
  image = left.imshow(grid_values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
  for (i, j), value in np.ndenumerate(grid_values):
    if np.isfinite(value):
      left.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white")
  left.set_yticks(range(len(subs)), [names[s] for s in subs], fontsize=7)
  left.set_xticks(range(width + 1), [f"client {i + 1}" for i in range(width)] + ["itself"])
  left.set_title("sub-federation's attention over its clients (seed 0)", fontsize=9)
  fig.colorbar(image, ax=left)
  block = exchange[np.ix_(subs, subs)]
  image = right.imshow(block, cmap="magma", vmin=0, vmax=max(block.max(), 1e-6))
  right.set_xticks(range(len(subs)), [names[s] for s in subs], rotation=90, fontsize=7)
  right.set_yticks(range(len(subs)), [names[s] for s in subs], fontsize=7)
  right.set_title("residual exchange: row attends to column", fontsize=9)
  fig.colorbar(image, ax=right)
  fig.tight_layout()
  fig.savefig(results / "attention.png", dpi=120)
  plt.close(fig)


def main() -> None:
  parser = grid.reproduction_parser(__doc__, HERE, "runs/worldlm")
  parser.add_argument("--parts", nargs="+", default=["main", "dp", "keys"])
  parser.add_argument("--only", nargs="+", default=[], help="run only these method names")
  args = grid.parse_reproduction_args(parser)
  results = pathlib.Path(args.out)
  results.mkdir(parents=True, exist_ok=True)
  if not args.summarize:
    run_all(args, results)
  records = grid.read_records(results)
  tables = {
    "main": main_table(records),
    "dp": dp_table(records),
    "keys": keys_table(records),
  }
  text = "".join(f"## {part}\n\n```\n{table}\n```\n\n" for part, table in tables.items())
  (results / "summary.md").write_text(text)
  plot_attention(results)
  print(text)


if __name__ == "__main__":
  main()
