"""A run's output folder: it owns one experiment, and nothing written there is ever half-written.

The folder holds ``config.json``, ``metrics.jsonl`` / ``metrics.csv``, ``accuracy.png``,
``client_accuracy.npz``, ``checkpoints/`` and a folder per metric writer (``tensorboard/``).
Before a run writes anything, :func:`claim` checks that the folder is free (or, when
resuming, that it holds the same experiment); files are replaced atomically (a temporary
file in the same folder, then ``os.replace``), so a kill leaves the old version or
the new one, never a cut one.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import pathlib
import shutil

import numpy as np

from fedjax_lab.config import config_from_dict, read_config_file
from fedjax_lab.tables import dotted_fields
from fedjax_lab.writers import WRITERS

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
PLOT_FILE = "accuracy.png"
CHECKPOINT_DIR = "checkpoints"
# The last evaluation's per-client accuracies (``write_client_accuracy``).
CLIENTS_FILE = "client_accuracy.npz"
# Written by hooks (fedjax_lab/hooks.py): a hook's early stop, and KeepBest's model.
STOP_FILE = "stopped.json"
BEST_FILE = "best_model.npz"
# The SHA-256 of each input file the config names (``INPUT_FILE_FIELDS``), checked on resume.
INPUTS_FILE = "inputs.json"
INPUT_FILE_FIELDS = ("systems.availability_trace",)
RUN_FILES = (
  CONFIG_FILE,
  METRICS_FILE,
  METRICS_CSV,
  PLOT_FILE,
  CHECKPOINT_DIR,
  CLIENTS_FILE,
  INPUTS_FILE,
  STOP_FILE,
  BEST_FILE,
)
# Held (``flock``, exclusive) by the process that runs in the folder, from the claim to the end
# of the run; the kernel releases it when the process dies, so a stale file is never a lock.
LOCK_FILE = ".fedjax-lab.lock"
# Fields a resumed run may change: when it stops, how often it reports, where it runs. The
# execution fields keep the same mathematics; a different strategy may round differently.
RESUMABLE_FIELDS = (
  "rounds",
  "eval_every",
  "checkpoint_every",
  "out_dir",
  "execution.",
  "logging.",
)
# ... except these, which change the mathematics (bfloat16 moves the loss by percents).
MATHEMATICAL_FIELDS = ("execution.compute_dtype",)


class RunFolderError(RuntimeError):
  """The output folder cannot hold this run (another experiment, unreadable, not writable)."""


def config_differences(stored: dict, current: dict) -> list[str]:
  """``"field: stored -> current"`` for every field of two ``ExperimentConfig.to_dict()`` that
  differs, except :data:`RESUMABLE_FIELDS`."""
  old, new = dotted_fields(stored), dotted_fields(current)
  return [
    f"{field}: {old.get(field, '(absent)')!r} -> {new.get(field, '(absent)')!r}"
    for field in sorted(set(old) | set(new))
    if old.get(field) != new.get(field)
    and (field in MATHEMATICAL_FIELDS or not field.startswith(RESUMABLE_FIELDS))
  ]


def holds_run_output(out_dir: pathlib.Path) -> bool:
  """Whether a run has claimed ``out_dir`` (its lock file) or written results there (metrics,
  checkpoints): then its ``config.json`` is the run's, not a config file of the user's."""
  return any((out_dir / name).exists() for name in (LOCK_FILE, METRICS_FILE, CHECKPOINT_DIR))


def stored_config(out_dir: pathlib.Path) -> dict:
  """The config a folder's run was started with, parsed with today's defaults (a field added
  since, at its default, is no difference)."""
  try:
    return config_from_dict(read_config_file(out_dir / CONFIG_FILE)).to_dict()
  except ValueError as error:
    raise RunFolderError(
      f"{out_dir / CONFIG_FILE} cannot be read by this version ({error}); choose a new out_dir"
    ) from None


def lock_folder(folder: pathlib.Path, name: str = LOCK_FILE, user: str = "run"):
  """The open file ``folder/name``, exclusively locked (``flock``) by this process, its pid
  written in it; ``RunFolderError`` naming the holder when another process holds it (``user``:
  what holds such a lock, a ``run`` or a ``sweep``). The kernel releases the lock when the
  process dies."""
  option = "out_dir" if user == "run" else "--out"
  try:
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / name, "a+")
  except OSError as error:
    raise RunFolderError(f"{option}={str(folder)!r} is not writable: {error.strerror}") from None
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.seek(0)
    holder = handle.read().strip() or "unknown"
    handle.close()
    raise RunFolderError(
      f"{option}={str(folder)!r} is in use by another {user} (process {holder}); wait for it "
      f"to end or choose another {option}"
    ) from None
  handle.seek(0)
  handle.truncate()
  handle.write(str(os.getpid()))
  handle.flush()
  return handle


def claim(
  out_dir: pathlib.Path, config: dict, *, resume: bool, overwrite: bool
) -> contextlib.closing:
  """Claim ``out_dir`` for this run, before anything is built or written.

  The folder is locked first (:data:`LOCK_FILE`), so of two processes that start in one folder
  at once the second is refused; the lock is held until the returned object is closed (or the
  process ends). Then: a new run needs an absent or empty folder; ``overwrite`` deletes the
  run files of whatever is there (other files are left). ``resume`` needs the folder's
  ``config.json`` to equal ``config`` in every field but :data:`RESUMABLE_FIELDS`. Raises
  ``RunFolderError`` naming the cause and the fix (the lock released).

  Returns:
    The held lock, as ``contextlib.closing``: ``close()`` releases it.
  """
  if out_dir.exists() and not out_dir.is_dir():
    raise RunFolderError(f"out_dir={str(out_dir)!r} is a file, not a folder")
  if resume and not (out_dir / CONFIG_FILE).is_file():
    raise RunFolderError(f"--resume: {out_dir} holds no run ({CONFIG_FILE} is missing)")
  run_output = holds_run_output(out_dir)
  if resume and not run_output:
    raise RunFolderError(
      f"--resume: {out_dir} holds a {CONFIG_FILE} but no run was started there (your config "
      "file?); start the run without --resume in another out_dir"
    )
  first = not (out_dir / LOCK_FILE).exists()
  lock = lock_folder(out_dir)
  try:
    _check_free(out_dir, config, run_output, resume=resume, overwrite=overwrite)
  except BaseException:
    if first:  # a refused run leaves no trace (its lock file would mark the folder as a run's)
      (out_dir / LOCK_FILE).unlink(missing_ok=True)
    lock.close()
    raise
  return contextlib.closing(lock)


def _check_free(
  out_dir: pathlib.Path, config: dict, run_output: bool, *, resume: bool, overwrite: bool
) -> None:
  """The checks of :func:`claim`, made while the folder is locked; ``run_output``: a run had
  claimed the folder before this one (``holds_run_output``)."""
  entries = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE)
  if resume:  # claim has checked that a run's config.json is there
    differences = config_differences(stored_config(out_dir), config)
    if differences:
      raise RunFolderError(
        f"--resume: the config differs from the run in {out_dir} in {'; '.join(differences)}. "
        "Only rounds, eval_every, checkpoint_every, out_dir, logging.* and execution.* (not "
        "execution.compute_dtype) may change on resume"
      )
    check_inputs(out_dir, config)
  elif entries and overwrite and CONFIG_FILE in entries and not run_output:
    raise RunFolderError(
      f"--overwrite: {out_dir} holds a {CONFIG_FILE} but no run output (your config file?); "
      "it is not replaced: choose another out_dir"
    )
  elif entries and overwrite:
    for name in RUN_FILES + tuple(WRITERS.get(w).folder for w in WRITERS):
      path = out_dir / name
      shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  elif entries:
    if CONFIG_FILE not in entries:
      what = f"files that are not a fedjax-lab run ({', '.join(entries[:3])})"
    elif not run_output:
      what = f"a {CONFIG_FILE} and no run output (your config file? it is never overwritten)"
    elif config_differences(stored_config(out_dir), config):
      changes = config_differences(stored_config(out_dir), config)
      what = f"another experiment (differs in {'; '.join(changes[:3])})"
    else:
      what = "this experiment already: --resume continues it"
    fix = "choose a new out_dir, or --overwrite to replace its run files"
    if CONFIG_FILE in entries and not run_output:
      fix = "choose another out_dir"
    raise RunFolderError(f"out_dir={str(out_dir)!r} holds {what}; {fix}")
  try:
    probe = out_dir / ".write-check"
    probe.write_text("")
    probe.unlink()
  except OSError as error:
    raise RunFolderError(f"out_dir={str(out_dir)!r} is not writable: {error.strerror}") from None


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Replace ``path`` by ``text`` in one step: readers see the old file or the new one. A
  write that fails (a full disk, a folder made read-only) leaves the old file and no
  temporary one, and is an ``OSError`` naming ``path``."""
  temporary = path.with_name(f".{path.name}.tmp")
  try:
    with open(temporary, "w", newline="") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except OSError as error:
    with contextlib.suppress(OSError):
      temporary.unlink(missing_ok=True)
    raise OSError(error.errno, error.strerror or str(error), str(path)) from None


def write_config(out_dir: pathlib.Path, config: dict) -> None:
  """``config.json``, and ``inputs.json``: the digests of the input files it names."""
  write_atomic(out_dir / CONFIG_FILE, json.dumps(config, indent=2))
  write_atomic(out_dir / INPUTS_FILE, json.dumps(input_digests(config), indent=2))


def input_digests(config: dict) -> dict[str, str]:
  """``{field: sha256 of the file}`` for each ``INPUT_FILE_FIELDS`` entry ``config`` sets."""
  fields = dotted_fields(config)
  return {
    field: hashlib.sha256(pathlib.Path(fields[field]).read_bytes()).hexdigest()
    for field in INPUT_FILE_FIELDS
    if fields.get(field)
  }


def check_inputs(out_dir: pathlib.Path, config: dict) -> None:
  """``RunFolderError`` naming an input file that changed since the run in ``out_dir`` wrote
  its ``inputs.json`` (a run written before inputs were recorded is not checked)."""
  path = out_dir / INPUTS_FILE
  if not path.is_file():
    return
  recorded = json.loads(path.read_text())
  for field, digest in input_digests(config).items():
    if recorded.get(field, digest) != digest:
      raise RunFolderError(
        f"--resume: {field}={dotted_fields(config)[field]!r} changed since the run in "
        f"{out_dir} started (its SHA-256 differs); restore the file the run used, or start a "
        "new run"
      )


def json_row(row: dict) -> str:
  """``row`` as one line of strict JSON: a value that is not finite (``inf``, ``nan``, which
  JSON has no token for) is written ``null``."""
  finite = {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in row.items()}
  return json.dumps(finite, allow_nan=False)


def write_metrics(out_dir: pathlib.Path, rows: list[dict]) -> None:
  """``metrics.jsonl`` (one JSON row per round, ``json_row``) and ``metrics.csv``, each
  replaced atomically."""
  write_atomic(out_dir / METRICS_FILE, "".join(json_row(row) + "\n" for row in rows))
  table = io.StringIO()
  writer = csv.DictWriter(table, list(dict.fromkeys(key for row in rows for key in row)))
  writer.writeheader()
  writer.writerows(rows)
  write_atomic(out_dir / METRICS_CSV, table.getvalue())


def write_client_accuracy(out_dir: pathlib.Path, round_index: int, clients: dict) -> None:
  """``client_accuracy.npz``, replaced atomically: the evaluated ``round`` and each array of
  ``clients`` (``client_ids`` and per-client accuracies, ``[evaluated clients]``)."""
  temporary = out_dir / f".{CLIENTS_FILE}.tmp"
  with open(temporary, "wb") as f:
    np.savez(f, round=round_index, **clients)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, out_dir / CLIENTS_FILE)


def read_client_accuracy(out_dir: pathlib.Path) -> dict[str, np.ndarray]:
  """The arrays ``write_client_accuracy`` wrote ({} when the run has none)."""
  path = out_dir / CLIENTS_FILE
  if not path.exists():
    return {}
  with np.load(path) as stored:
    return {key: stored[key] for key in stored.files}


def read_metrics(out_dir: pathlib.Path) -> list[dict]:
  """The rows of ``metrics.jsonl``. A last line cut short (by a kill during a plain write,
  which this module never makes: the start of a JSON row without its end) is dropped: its
  round is computed again on resume. Any other line that does not parse, a note appended by
  hand included, is a ``RunFolderError`` naming it: nothing in the file is dropped unseen."""
  path = out_dir / METRICS_FILE
  if not path.exists():
    return []
  lines = path.read_text().splitlines()
  rows = []
  for number, line in enumerate(lines, 1):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if number == len(lines) and line.startswith("{") and not line.rstrip().endswith("}"):
        break
      raise RunFolderError(
        f"{path}, line {number}, is not a JSON row: {line[:60]!r} (keep notes in another file)"
      ) from None
  return rows


def check_rounds(out_dir: pathlib.Path, rows: list[dict]) -> None:
  """``rows`` (of ``read_metrics``) must be rounds 1, 2, ... without a gap: a
  ``RunFolderError`` naming the first line that breaks the sequence."""
  for line, row in enumerate(rows, 1):
    if row.get("round") != line:
      raise RunFolderError(
        f"{out_dir / METRICS_FILE}, line {line}, holds round {row.get('round')!r} where round "
        f"{line} belongs (a row deleted or edited?); restore the file, or --overwrite"
      )
