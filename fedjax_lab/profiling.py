"""Profiles of chosen rounds: a ``jax.profiler`` trace (Perfetto format) written into the run
folder, and a per-op table summed from it.

XLA's runtime records each op it executes as a trace event whose arguments name the op
(``hlo_op``) and its program (``hlo_module``); summing the events' durations by op gives
where a round's compute went (the method of docs/performance.md, as a command:
``fedjax-lab --profile 3-4 ...``).
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib

from fedjax_lab.tables import format_table

PROFILE_FOLDER = "profile"  # inside the run folder
TRACE_FILE = "perfetto_trace.json.gz"  # what jax.profiler writes with create_perfetto_trace


def parse_rounds(text: str) -> tuple[int, int]:
  """``"N"`` or ``"A-B"`` (1-based, inclusive) as ``(first, last)``; ``ValueError`` in one
  line otherwise."""
  parts = text.split("-")
  try:
    first, last = int(parts[0]), int(parts[-1])
  except ValueError:
    first, last = 0, 0
  if len(parts) > 2 or not 1 <= first <= last:
    raise ValueError(f"--profile must be a round N or rounds A-B with 1 <= A <= B, got {text!r}")
  return first, last


def newest_trace(folder: pathlib.Path) -> pathlib.Path:
  """The most recent Perfetto trace under ``folder`` (``jax.profiler`` writes one per session
  in ``plugins/profile/<time>/``); ``FileNotFoundError`` naming the folder."""
  traces = sorted(folder.glob(f"plugins/profile/*/{TRACE_FILE}"))
  if not traces:
    raise FileNotFoundError(f"no {TRACE_FILE} under {folder}")
  return traces[-1]


def op_totals(trace: pathlib.Path) -> list[dict]:
  """Per XLA op of the trace: calls and total milliseconds, largest first."""
  with gzip.open(trace, "rt") as file:
    events = json.load(file)["traceEvents"]
  totals = collections.defaultdict(lambda: [0, 0.0])
  for event in events:
    args = event.get("args") or {}
    if event.get("ph") == "X" and "hlo_op" in args:
      total = totals[(args.get("hlo_module", ""), args["hlo_op"])]
      total[0] += 1
      total[1] += event.get("dur", 0.0) / 1000
  rows = [
    {"op": op, "program": module, "calls": calls, "ms": ms}
    for (module, op), (calls, ms) in totals.items()
  ]
  return sorted(rows, key=lambda row: -row["ms"])


def op_table(trace: pathlib.Path, top: int = 15) -> str:
  """The ``top`` ops of ``op_totals`` with their share of all ops' time, and the total."""
  rows = op_totals(trace)
  total = sum(row["ms"] for row in rows) or 1.0
  shown = [
    {**row, "ms": f"{row['ms']:.2f}", "share %": f"{100 * row['ms'] / total:.1f}"}
    for row in rows[:top]
  ]
  if not shown:
    return f"{trace}: no XLA op events"
  table = format_table(shown, ["op", "program", "calls", "ms", "share %"])
  return f"{table}\n{len(rows)} ops, {total:.1f} ms in all; trace: {trace}"
