"""Metric writers: where a run's rows go beside ``metrics.jsonl`` (TensorBoard event files by
default; MLflow and Weights & Biases when their packages are installed), chosen by
``logging.writers``.

A writer is ``open(out_dir, config, start_round) -> MetricWriter``; its ``write(row,
distributions)`` gets each round's metrics row (the one ``metrics.jsonl`` holds) and, at an
evaluation, ``distributions``: per-client values by name (``client_accuracy``, one value per
evaluated client). The JSONL and CSV stay the source of truth: they are written first, and a
writer that fails is reported in one line and turned off for the rest of the run
(:class:`WriterSet`). A plugin adds one with ``WRITERS.register(name, WriterEntry(...))``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import numbers
import pathlib
from collections.abc import Callable
from typing import Protocol

import numpy as np

from fedjax_lab.registry import Registry


class MetricWriter(Protocol):
  def write(self, row: dict, distributions: dict[str, np.ndarray]) -> None: ...

  def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class WriterEntry:
  """A registered writer.

  Attributes:
    open: ``(out_dir, config, start_round) -> MetricWriter``: ``config`` is the run's
      ``ExperimentConfig.to_dict()``, ``start_round`` the rounds already done (a resumed run
      continues its writer's record from round ``start_round + 1``).
    folder: the writer's folder inside the run folder (``--overwrite`` deletes it).
    package: the module it needs, checked before the run starts; ``extra``: the pip extra
      that installs it (``pip install 'fedjax_lab[extra]'``).
  """

  open: Callable[[pathlib.Path, dict, int], MetricWriter]
  folder: str
  package: str | None = None
  extra: str | None = None


WRITERS: Registry[WriterEntry] = Registry("logging.writers")


def scalars(row: dict) -> dict[str, float]:
  """The finite numbers of a metrics row but its ``round``, as floats (booleans left out)."""
  return {
    key: float(value)
    for key, value in row.items()
    if key != "round"
    and isinstance(value, numbers.Real)
    and not isinstance(value, bool)
    and math.isfinite(value)
  }


def check_installed(names) -> None:
  """``ValueError`` in one line for the first writer in ``names`` whose package is missing,
  naming the extra that installs it (checked before anything is built)."""
  for name in names:
    entry = WRITERS.get(name)
    if entry.package is not None and importlib.util.find_spec(entry.package) is None:
      raise ValueError(
        f"logging.writers={name!r} needs the {entry.package} package: pip install "
        f"'fedjax_lab[{entry.extra}]' (or drop {name!r} from logging.writers)"
      )


class WriterSet:
  """The run's open writers. A writer whose ``open``, ``write`` or ``close`` raises is
  reported through ``report`` in one line and dropped; the others and the run go on."""

  def __init__(self, names, out_dir: pathlib.Path, config: dict, start_round: int, report):
    self._report, self._writers = report, {}
    for name in names:
      self._call(name, lambda: self._writers.__setitem__(
        name, WRITERS.get(name).open(out_dir, config, start_round)))  # fmt: skip

  def _call(self, name: str, action) -> None:
    try:
      action()
    except Exception as error:  # a writer never stops the run nor touches metrics.jsonl
      self._writers.pop(name, None)
      self._report(
        f"writer {name} failed ({type(error).__name__}: {error}); it is off for the rest of "
        "this run, metrics.jsonl is complete"
      )

  def write(self, row: dict, distributions: dict[str, np.ndarray]) -> None:
    for name, writer in list(self._writers.items()):
      self._call(name, lambda: writer.write(row, distributions))

  def close(self) -> None:
    for name, writer in list(self._writers.items()):
      self._call(name, writer.close)
    self._writers = {}

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self._writers)


def _register_builtins() -> None:
  from fedjax_lab.writers import event_files, mlflow_runs, wandb_runs

  WRITERS.register("tensorboard", WriterEntry(event_files.open_writer, event_files.FOLDER))
  WRITERS.register(
    "mlflow", WriterEntry(mlflow_runs.open_writer, mlflow_runs.FOLDER, "mlflow", "mlflow")
  )
  WRITERS.register(
    "wandb", WriterEntry(wandb_runs.open_writer, wandb_runs.FOLDER, "wandb", "wandb")
  )


_register_builtins()
