"""Orbax checkpoints of (algorithm state, RNG key, round)."""

from __future__ import annotations

import os
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

# Room kept free beyond a checkpoint's array bytes (orbax's metadata and index files).
FREE_SPACE_MARGIN = 1 << 20


class CheckpointError(RuntimeError):
  """No checkpoint of the run can be restored, or one cannot be written."""


def manager(directory: pathlib.Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    directory.absolute(),
    # A save cut short by a kill leaves a temporary folder; it is removed, never restored.
    options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, cleanup_tmp_directories=True),
  )


def save(checkpoints: ocp.CheckpointManager, round_count: int, state, rounds_key) -> None:
  """Save after ``round_count`` completed rounds (asynchronously: ``finish``). A disk without
  room for it (its arrays' bytes plus ``FREE_SPACE_MARGIN``) is a ``CheckpointError`` before
  orbax starts writing: a write that fails midway spills hundreds of lines of tracebacks
  from orbax's threads."""
  need = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(state)) + FREE_SPACE_MARGIN
  directory = pathlib.Path(checkpoints.directory)
  writable = directory if directory.exists() else directory.parent
  if not os.access(writable, os.W_OK):
    raise CheckpointError(
      f"the checkpoint of round {round_count} cannot be written: {writable} is not writable "
      "(made read-only during the run?); the checkpoints and metrics written so far are kept"
    )
  free = shutil.disk_usage(directory if directory.exists() else directory.parent).free
  if free < need:
    raise CheckpointError(
      f"no room for the checkpoint of round {round_count} in {directory}: "
      f"{free / 2**20:.1f} MiB free, it needs about {need / 2**20:.1f} MiB (free some space, "
      "or checkpoint_every=0)"
    )
  item = {
    "state": state,
    "rng": np.asarray(jax.random.key_data(rounds_key)),  # host value: any process count
    "round": np.asarray(round_count, np.int64),
  }
  checkpoints.save(round_count, args=ocp.args.StandardSave(item))


def finish(checkpoints: ocp.CheckpointManager) -> None:
  """Wait for the checkpoints being written, then close the manager. A write that failed for
  lack of space or of permission (a folder made read-only mid-run) is a one-line
  ``CheckpointError`` naming the folder."""
  try:
    checkpoints.wait_until_finished()
  except Exception as error:
    causes = ("No space left on device", "Permission denied", "Read-only file system")
    cause = next((c for c in causes if c in str(error)), None)
    if cause is None:
      raise
    raise CheckpointError(
      f"a checkpoint in {checkpoints.directory} could not be written: {cause.lower()}"
    ) from None
  finally:
    checkpoints.close()


def _reason(error: Exception) -> str:
  first_line = (str(error).strip().splitlines() or [""])[0]
  return f"{type(error).__name__}: {first_line[:120]}"


def restore(
  checkpoints: ocp.CheckpointManager, like_state, rounds_key, *, at_most: int | None = None
) -> tuple[object, int, list[str]]:
  """``(state, completed_rounds, skipped)`` from the newest checkpoint that restores, at or
  below round ``at_most`` if given; ``skipped`` says which newer ones did not, and why.
  ``like_state`` gives the structure. The skipped ones are deleted: the resumed run writes
  those rounds again. A run stopped before its first checkpoint was complete has none:
  ``(like_state, 0, [])``, the run starts over (deterministically, so the rounds it recorded
  are written again, equal). Raises ``CheckpointError`` if checkpoints exist and none restores,
  and if the saved RNG key is not the one this config's seed derives."""
  abstract = {
    "state": jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state),
    "rng": ocp.utils.to_shape_dtype_struct(jax.random.key_data(rounds_key)),
    "round": ocp.utils.to_shape_dtype_struct(np.asarray(0, np.int64)),
  }
  checkpoints.reload()  # steps written since the manager was made count too
  skipped, steps = [], sorted(checkpoints.all_steps(), reverse=True)
  if not steps:
    return like_state, 0, []
  for index, step in enumerate(steps):
    if at_most is not None and step > at_most:
      skipped.append(f"round {step} (newer than the metrics, which end at round {at_most})")
      continue
    try:
      item = checkpoints.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as error:  # a damaged checkpoint fails in tensorstore, orbax or json
      skipped.append(f"round {step} ({_reason(error)})")
      continue
    if not np.array_equal(np.asarray(item["rng"]), np.asarray(jax.random.key_data(rounds_key))):
      raise CheckpointError(f"checkpoint of round {step} was written with another seed")
    for newer in steps[:index]:
      checkpoints.delete(newer)
    return item["state"], int(item["round"]), skipped
  raise CheckpointError(f"no checkpoint in {checkpoints.directory} restores: {'; '.join(skipped)}")
