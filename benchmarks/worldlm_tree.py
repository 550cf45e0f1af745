"""WorldLM round speed: the whole federation tree in one jitted program against one program per
federation (each federation's clients alone, run one after another, as a system of separate
federation servers would in one process).

  python benchmarks/worldlm_tree.py                     # experiments/worldlm/base.json's world
  python benchmarks/worldlm_tree.py --rounds 20 --set local.steps=10

Seconds per round: the median over ``--rounds`` rounds after one warm-up (compile) round;
the per-federation figure is the sum of the federations' medians. Prints a table and writes
it, with the machine and versions, to ``benchmarks/results/worldlm_tree.json`` (the table in
experiments/worldlm/README.md is ``table`` of that file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import time

import jax
import numpy as np

from fedjax_lab import build_federation, grid, load_config
from fedjax_lab.algorithms import compiled_round
from fedjax_lab.build import build_experiment
from fedjax_lab.tables import format_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks/results/worldlm_tree.json"


def table(record: dict) -> str:
  """The printed table of a result ``record``."""
  return format_table(record["rows"], list(record["rows"][0]))


def clients_of(data, federation: str):
  """The federation's clients alone, as a federation of their own."""
  keep = [k for k, path in enumerate(data.client_paths) if path.split("/")[0] == federation]
  return data.subset(keep)


def seconds_per_round(config, data, rounds: int) -> tuple[float, float]:
  """(median seconds per round after the first, first round's seconds)."""
  experiment = build_experiment(config, data)
  algorithm = experiment.algorithm
  round_fn = compiled_round(algorithm, experiment.setup.executor)
  state = algorithm.init(jax.random.key(0))
  cohort = data.cohort(np.arange(data.num_clients))
  times = []
  for r in range(rounds + 1):
    tick = time.perf_counter()
    state, metrics = round_fn(state, cohort, jax.random.key(r))
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - tick)
  return float(np.median(times[1:])), times[0]


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--config", default=str(ROOT / "experiments/worldlm/base.json"))
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--set", action="append", default=[], help="config override")
  args = parser.parse_args()
  base = load_config(args.config, args.set)
  data = build_federation(base.data)
  rows = []
  whole, compile_whole = seconds_per_round(base, data, args.rounds)
  rows.append(
    {
      "program": "whole tree, one program",
      "clients": data.num_clients,
      "s/round": f"{whole:.3f}",
      "first round s": f"{compile_whole:.1f}",
    }
  )
  total, first = 0.0, 0.0
  for federation in sorted({p.split("/")[0] for p in data.client_paths}):
    part = clients_of(data, federation)
    config = dataclasses.replace(
      base,
      cohort_size=part.num_clients,
      data=dataclasses.replace(base.data, num_clients=part.num_clients),
    )
    seconds, compile_seconds = seconds_per_round(config, part, args.rounds)
    total, first = total + seconds, first + compile_seconds
    rows.append(
      {
        "program": f"  {federation} alone",
        "clients": part.num_clients,
        "s/round": f"{seconds:.3f}",
        "first round s": f"{compile_seconds:.1f}",
      }
    )
  rows.append(
    {
      "program": "one program per federation, summed",
      "clients": data.num_clients,
      "s/round": f"{total:.3f}",
      "first round s": f"{first:.1f}",
    }
  )
  record = {"rows": rows, "rounds": args.rounds, "overrides": args.set, **grid.machine_record()}
  RESULT.write_text(json.dumps(record, indent=1) + "\n")
  print(table(record))
  print(
    f"\nwhole tree / per federation: {whole / total:.2f}x the time; "
    f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
    f"jax {jax.__version__}, {args.rounds} rounds, local.steps={base.local.steps}, "
    f"batch {base.local.batch_size}, model {base.model.name}"
  )


if __name__ == "__main__":
  main()
