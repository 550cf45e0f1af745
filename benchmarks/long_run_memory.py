"""Peak memory against the number of rounds under the ``loop`` strategy, for the methods with
server-side control flow (issue 42): a method whose server code compiles a new program every
round grows by megabytes a round until the process dies (FedMR died at round 471 of 500).

  python benchmarks/long_run_memory.py                       # about 25 min on a 2-core CPU
  python benchmarks/long_run_memory.py --methods ifca cfl --rounds 50 300

Each (method, rounds) is a fresh ``fedjax-lab`` process on ``digits``, 20 clients, every client
each round, ``execution.strategy=loop``, evaluated only at the end; its peak RSS is read from
``getrusage(RUSAGE_CHILDREN)``. The table gives both peaks, their difference and the
difference a round. Appends its rows to ``benchmarks/results/long_run_memory.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from fedjax_lab.tables import format_table

METHODS = (
  "fedavg",
  "ifca",
  "cfl",
  "pfedlia",
  "fedmr",
  "fedsnd",
  "feddf",
  "fedgen",
  "adaptive_pruning",
)
BASE = [
  "data.source=digits",
  "data.num_clients=20",
  "cohort_size=20",
  "execution.strategy=loop",
  "eval_every=100000",
  "checkpoint_every=0",
  "logging.writers=[]",
]
# A method's settings so that its server-side control flow runs every round or recurs.
SETTINGS = {
  "pfedlia": ["algorithm.pfedlia.warmup_rounds=2", "algorithm.pfedlia.recluster_every=5"],
  "fedmr": ["algorithm.fedmr.first_stage_rounds=5"],
}
RESULTS = pathlib.Path(__file__).parent / "results" / "long_run_memory.jsonl"


# The child reports its own peak RSS (ru_maxrss of RUSAGE_CHILDREN is the largest child so
# far, not this one's).
RUN = (
  "import resource, sys\n"
  "from fedjax_lab.cli import main\n"
  "code = main(sys.argv[1:] + ['--no-progress'])\n"
  "sys.stderr.write(f'PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n')\n"
  "sys.exit(code)\n"
)


def _measure(method: str, rounds: int) -> tuple[float, float]:
  with tempfile.TemporaryDirectory() as out:
    command = [sys.executable, "-c", RUN, *BASE, *SETTINGS.get(method, [])]
    command += [f"algorithm.name={method}", f"rounds={rounds}", f"out_dir={out}/run"]
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
  line = next(x for x in done.stderr.splitlines() if x.startswith("PEAK_RSS_KB"))
  return int(line.split()[1]) / 1024, seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  parser.add_argument("--rounds", nargs=2, type=int, default=[50, 300], metavar=("A", "B"))
  args = parser.parse_args()
  first, last = args.rounds
  rows = []
  for method in args.methods:
    (short, short_s), (long, long_s) = _measure(method, first), _measure(method, last)
    rows.append(
      {
        "method": method,
        f"peak MB at {first}": f"{short:.0f}",
        f"peak MB at {last}": f"{long:.0f}",
        "growth MB": f"{long - short:+.0f}",
        "MB a round": f"{(long - short) / (last - first):+.3f}",
        f"s a round ({first}..{last})": f"{(long_s - short_s) / (last - first):.3f}",
      }
    )
    print(rows[-1], flush=True)
  print(format_table(rows, list(rows[0])))
  RESULTS.parent.mkdir(parents=True, exist_ok=True)
  with RESULTS.open("a") as f:
    machine = {"machine": platform.processor() or platform.machine(), "time": time.time()}
    for row in rows:
      f.write(json.dumps({**row, **machine}) + "\n")


if __name__ == "__main__":
  main()
