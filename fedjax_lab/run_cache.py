"""A run read back when finished, extended or resumed when not, and never replaced: the run
cache under ``fedjax-lab sweep`` and the reproduction scripts (``run_or_load``), and what a
run's rows say (``last_evaluations``, ``diverged``)."""

from __future__ import annotations

import pathlib

import numpy as np

from fedjax_lab import run_folder
from fedjax_lab.checkpoint import CheckpointError
from fedjax_lab.config import load_config
from fedjax_lab.run_hooks import TrainingDivergedError
from fedjax_lab.runner import run

DIVERGED_MARKER = "diverged.txt"


def _stored_config(path: pathlib.Path):
  """The config stored with a run, or None if today's code cannot read it (an older format)."""
  try:
    return load_config(str(path))
  except ValueError:
    return None


def run_or_load(config, data) -> tuple[list[dict], bool]:
  """(metrics, whether they were read back from an earlier finished run in ``out_dir``).

  Only a run made with the same config is read back; a run of the same experiment with fewer
  ``rounds`` (or other ``run_folder.RESUMABLE_FIELDS``) is extended from its last checkpoint.
  A folder holding any other run, finished or not, is never touched: ``RunFolderError`` names
  the fields that differ (``reuse_conflict``). Its ``config.json`` is read with today's
  defaults, so a field added since then, at its default, does not count as a change.
  A run that diverges (``TrainingDivergedError``) is finished too: its rows up to the
  divergence are returned with a last row ``{"round": r, "diverged": True}``, and a
  ``diverged.txt`` marker keeps it from being rerun."""
  out_dir = pathlib.Path(config.out_dir)
  conflict = reuse_conflict(config)
  if conflict is not None:
    raise run_folder.RunFolderError(
      f"out_dir={str(out_dir)!r} holds another run ({conflict}); it is kept: choose another "
      "folder, or delete that one to rerun it"
    )
  stored = out_dir / run_folder.CONFIG_FILE
  recorded = recorded_run(config)
  if recorded is not None:
    return recorded, True
  try:
    return _continue_or_start(config, data, resumable=stored.exists()), False
  except TrainingDivergedError as error:
    (out_dir / DIVERGED_MARKER).write_text(f"{error}\n")
    return run_folder.read_metrics(out_dir) + [{"round": config.rounds, "diverged": True}], False


def reuse_conflict(config) -> str | None:
  """Why ``config.out_dir`` cannot take a run of ``config`` without replacing the run it holds:
  the fields that differ (``"algorithm.name: 'fedprox' -> 'fedavg'"``, at most three), or
  ``rounds`` where the held run is longer (a run is extended, never cut short), or that this
  version cannot read the held config. None when the folder holds no run, the same run, or
  the same experiment with fewer rounds."""
  stored = pathlib.Path(config.out_dir) / run_folder.CONFIG_FILE
  if not stored.exists():
    return None
  stored_config = _stored_config(stored)
  if stored_config is None:
    return f"{stored} cannot be read by this version"
  if stored_config == config:
    return None
  differences = run_folder.config_differences(stored_config.to_dict(), config.to_dict())
  if not differences and stored_config.rounds > config.rounds:
    differences = [f"rounds: {stored_config.rounds} -> {config.rounds} (never cut short)"]
  return f"differs in {'; '.join(differences[:3])}" if differences else None


def recorded_run(config, stored_config=None) -> list[dict] | None:
  """The rows of the run of exactly ``config`` finished in its ``out_dir`` (a diverged one's
  with a last ``{"diverged": True}`` row); None when there is none (``stored_config``: the
  folder's config, if already read)."""
  out_dir = pathlib.Path(config.out_dir)
  stored = out_dir / run_folder.CONFIG_FILE
  if stored_config is None and stored.exists():
    stored_config = _stored_config(stored)
  if stored_config != config:
    return None
  rows = run_folder.read_metrics(out_dir)
  if (out_dir / DIVERGED_MARKER).exists():
    return rows + [{"round": config.rounds, "diverged": True}]
  return rows if rows and rows[-1]["round"] == config.rounds else None


def _continue_or_start(config, data, resumable: bool) -> list[dict]:
  """Continue the run of this experiment in ``out_dir`` from its newest checkpoint that
  restores (``resumable``: the folder holds one, ``reuse_conflict`` has checked it is this
  experiment); start afresh when it holds no run, or an unfinished run of exactly this config
  that never wrote a checkpoint that restores (rerunning it loses nothing)."""
  if resumable:
    try:
      return run(config, data=data, progress=False, resume=True).metrics
    except (CheckpointError, run_folder.RunFolderError):
      stored = _stored_config(pathlib.Path(config.out_dir) / run_folder.CONFIG_FILE)
      if stored != config:
        raise
  return run(config, data=data, progress=False, overwrite=True).metrics


def diverged(metrics: list[dict]) -> bool:
  return any(row.get("diverged") for row in metrics)


def last_evaluations(metrics: list[dict], key: str, count: int = 3) -> float:
  """Mean of ``key`` over the last ``count`` evaluations (smooths round-to-round noise);
  NaN for a diverged run."""
  values = [m[key] for m in metrics if key in m]
  if diverged(metrics) or not values:
    return float("nan")
  return float(np.mean(values[-count:]))
