"""Plain-text result tables, shared by the CLI and the reproduction scripts."""

from __future__ import annotations

import dataclasses

SUMMARY_COLUMNS = [
  "run",
  "rounds",
  "global_acc",
  "client_acc_mean",
  "client_acc_p10",
  "MB_sent",
  "seconds",
]


def dotted_fields(values: dict, prefix: str = "") -> dict:
  """A nested config (``ExperimentConfig.to_dict()``) as ``{"local.epochs": 2, ...}``."""
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(dotted_fields(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def options_text(options) -> str:
  """An options dataclass as a user writes it: ``alpha=0.1 min_examples=20`` ("" for none)."""
  if not dataclasses.is_dataclass(options):
    return ""
  return " ".join(f"{f.name}={getattr(options, f.name)}" for f in dataclasses.fields(options))


def _cell(value) -> str:
  """Floats with 4 decimals; None (a metric the run has none of) as ``none``."""
  if value is None:
    return "none"
  return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict], columns: list[str]) -> str:
  """A plain-text table; floats with 4 decimals, a missing cell empty, None ``none``."""
  cells = [[_cell(row[c]) if c in row else "" for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
  line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def summary_row(name: str, result) -> dict:
  """Final metrics of a run (a ``RunResult``), for the results table; None where the run has
  no such metric (Local-only has no global model)."""
  last = [r for r in result.metrics if "global_accuracy" in r or "client_accuracy_mean" in r][-1]
  return {
    "run": name,
    "rounds": last["round"],
    "global_acc": last.get("global_accuracy"),
    "client_acc_mean": last.get("client_accuracy_mean"),
    "client_acc_p10": last.get("client_accuracy_p10"),
    "MB_sent": sum(r["bytes_up"] + r["bytes_down"] for r in result.metrics) / 1e6,
    "seconds": result.wall_seconds,
  }
