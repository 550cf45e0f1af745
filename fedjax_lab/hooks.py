"""Hooks: user code run at the end of every round of a run, without changing the package.

A hook is an object with ``on_round_end(event) -> reason or None`` and, if it wants,
``on_round_start(round)`` (before the round's cohort is drawn), ``on_run_end(event)`` (after
the last round run) and ``close()`` (on every exit, an error's included); subclass ``Hook``
and override what you need. ``event`` is a ``RoundEnd``: the round just done, its metrics row
(a hook may add entries: they are written to ``metrics.jsonl`` with the row), every row so
far, the state, the algorithm, the config, the run folder and, at an evaluation, the
per-client accuracies. The runner's own evaluation, privacy accounting, writing and
checkpointing are hooks too (``run_hooks``): the user's run after the evaluation and before
the row is written. A returned reason stops the run after this round: the round is checkpointed,
``stopped.json`` records the round and the reason, and ``--resume`` honours it (nothing more
is run). Pass hooks as ``run(config, hooks=[...])``, or from a ``--plugin`` file with
``hooks.install(...)``.

Hooks run on every process of a ``jax.distributed`` run (they see the same rows, so they stop
together); files are written by process 0. A hook that keeps state must derive it from
``event.rows`` (the rows survive a resume; the
hook object does not), so a resumed run equals an uninterrupted one. Shipped: ``EarlyStopping``
(stop when a metric reaches a target), ``KeepBest`` (the global model of the best evaluation,
in ``best_model.npz``), ``EveryRounds`` (a custom metric every k rounds).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any, Optional

import jax
import numpy as np

from fedjax_lab.run_folder import BEST_FILE, STOP_FILE


@dataclasses.dataclass(frozen=True)
class RoundEnd:
  """What a hook sees after round ``round`` (1-based): ``row`` is that round's metrics (add to
  it), ``rows`` every row of the run so far, ``row`` last; ``clients``, at an evaluation, the
  evaluated ``client_ids`` and their ``client_accuracy`` (``evaluation.Evaluation.clients``),
  else empty; ``reported``: the clients whose results reached the server this round."""

  round: int
  row: dict
  rows: list
  state: Any
  algorithm: Any
  config: Any
  out_dir: pathlib.Path
  clients: dict = dataclasses.field(default_factory=dict)
  reported: int = 0  # clients whose results reached the server this round


class Hook:
  """The hook protocol, doing nothing (module docstring)."""

  def on_round_start(self, round_number: int) -> None:
    """Called before round ``round_number`` (1-based) draws its cohort."""
    del round_number

  def on_round_end(self, event: RoundEnd) -> Optional[str]:
    """Called after every round, before its row is written; a string stops the run."""
    del event
    return None

  def on_run_end(self, event: RoundEnd) -> None:
    """Called once after the last round run (the end of ``rounds`` or an early stop)."""
    del event


@dataclasses.dataclass
class EarlyStopping(Hook):
  """Stop once ``metric`` reaches ``target`` at an evaluation (``>=`` with ``mode="max"``,
  ``<=`` with ``"min"``)."""

  metric: str
  target: float
  mode: str = "max"

  def __post_init__(self):
    if self.mode not in ("max", "min"):
      raise ValueError(f"EarlyStopping.mode must be 'max' or 'min', got {self.mode!r}")

  def on_round_end(self, event: RoundEnd) -> Optional[str]:
    value = event.row.get(self.metric)
    if value is None:
      return None
    reached = value >= self.target if self.mode == "max" else value <= self.target
    return f"{self.metric} {value:.4f} reached {self.target}" if reached else None


@dataclasses.dataclass
class KeepBest(Hook):
  """Keep the global model of the evaluation with the best ``metric`` so far (``mode``: max or
  min) in ``out_dir/best_model.npz``: its leaves by path, ``round`` and ``value``. The best
  so far is read from ``event.rows``, so a resumed run keeps the same model. Under
  ``jax.distributed`` process 0 writes it."""

  metric: str = "global_accuracy"
  mode: str = "max"

  def on_round_end(self, event: RoundEnd) -> Optional[str]:
    value = event.row.get(self.metric)
    if value is None or event.algorithm.global_params is None or jax.process_index() != 0:
      return None
    earlier = [r[self.metric] for r in event.rows[:-1] if r.get(self.metric) is not None]
    best = (max if self.mode == "max" else min)(earlier, default=None)
    improves = best is None or (value > best if self.mode == "max" else value < best)
    if not improves:  # a tie keeps the earlier model
      return None
    params = event.algorithm.global_params(event.state)
    leaves = {
      jax.tree_util.keystr(path): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    path = event.out_dir / BEST_FILE
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as f:
      np.savez(f, round=event.round, value=value, **leaves)
    os.replace(temporary, path)
    return None


@dataclasses.dataclass
class EveryRounds(Hook):
  """Every ``every`` rounds, ``metrics(event) -> {name: number}`` added to the round's row."""

  every: int
  metrics: Callable[[RoundEnd], dict]

  def on_round_end(self, event: RoundEnd) -> Optional[str]:
    if event.round % self.every == 0:
      event.row.update({k: float(v) for k, v in self.metrics(event).items()})
    return None


_INSTALLED: list[Hook] = []


def install(*hooks: Hook) -> None:
  """Add ``hooks`` to every run the CLI starts in this process (from a ``--plugin`` file)."""
  for hook in hooks:
    if not callable(getattr(hook, "on_round_end", None)):
      raise TypeError(f"a hook needs an on_round_end(event) method, got {hook!r}")
  _INSTALLED.extend(hooks)


def installed() -> tuple[Hook, ...]:
  """The hooks ``install`` added."""
  return tuple(_INSTALLED)


def round_start(hooks, round_number: int) -> None:
  for hook in hooks:
    getattr(hook, "on_round_start", lambda round_number: None)(round_number)


def round_end(hooks, event: RoundEnd) -> Optional[str]:
  """Every hook's ``on_round_end`` (all run); the first stop reason, if any."""
  reasons = [hook.on_round_end(event) for hook in hooks]
  return next((reason for reason in reasons if reason), None)


def run_end(hooks, event: RoundEnd) -> None:
  for hook in hooks:
    getattr(hook, "on_run_end", lambda event: None)(event)


def record_stop(out_dir: pathlib.Path, round_done: int, reason: str) -> None:
  """``stopped.json``: a hook stopped the run after ``round_done`` rounds, for ``reason``."""
  (out_dir / STOP_FILE).write_text(json.dumps({"round": round_done, "reason": reason}))


def recorded_stop(out_dir: pathlib.Path) -> Optional[dict]:
  """``{"round", "reason"}`` of a run a hook stopped, else None."""
  path = out_dir / STOP_FILE
  return json.loads(path.read_text()) if path.is_file() else None
