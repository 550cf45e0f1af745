"""``--profile ROUNDS`` (``profiling.py``): the chosen rounds are traced into the run folder in
Perfetto format, the per-op table is summed from the trace's XLA op events, and a bad round
range is one line before anything runs."""

from __future__ import annotations

import gzip
import json

import pytest

from fedjax_lab import profiling
from fedjax_lab.cli import main

TINY = [
  "data.source=digits",
  "data.num_clients=6",
  "cohort_size=3",
  "rounds=3",
  "eval_every=3",
  "checkpoint_every=0",
]


def test_op_totals_sum_the_xla_op_events_by_op(tmp_path):
  trace = tmp_path / "plugins/profile/1/perfetto_trace.json.gz"
  trace.parent.mkdir(parents=True)
  op = lambda name, dur: {"ph": "X", "dur": dur, "name": name,
                          "args": {"hlo_op": name, "hlo_module": "jit_round"}}  # fmt: skip
  events = [op("dot.1", 3000.0), op("fusion", 500.0), op("dot.1", 1000.0),
            {"ph": "X", "dur": 9e9, "name": "PjitFunction(round)"}]  # fmt: skip
  with gzip.open(trace, "wt") as file:
    json.dump({"traceEvents": events}, file)
  assert profiling.newest_trace(tmp_path) == trace
  rows = profiling.op_totals(trace)
  assert [(r["op"], r["calls"], r["ms"]) for r in rows] == [("dot.1", 2, 4.0), ("fusion", 1, 0.5)]
  assert "88.9" in profiling.op_table(trace)  # dot.1's share of the ops' 4.5 ms


@pytest.mark.parametrize("text", ["0", "3-2", "a", "1-2-3"])
def test_a_bad_round_range_is_one_line(text):
  with pytest.raises(ValueError, match="--profile must be a round N or rounds A-B"):
    profiling.parse_rounds(text)


@pytest.mark.slow
def test_profiled_rounds_leave_a_trace_and_an_op_table(tmp_path, capsys):
  out = tmp_path / "run"
  assert main(["--no-progress", "--profile", "2-3", *TINY, f"out_dir={out}"]) == 0
  printed = capsys.readouterr().out
  trace = profiling.newest_trace(out / profiling.PROFILE_FOLDER)
  assert trace.stat().st_size > 0 and "time per XLA op, rounds 2-3" in printed
  assert profiling.op_totals(trace) and "jit_round_fn" in printed
  assert main(["--no-progress", "--profile", "4", *TINY, f"out_dir={tmp_path / 'b'}"]) == 2
  assert "--profile must name rounds within rounds=3" in capsys.readouterr().err
