"""Orbax checkpoints of (algorithm state, RNG key, round)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No checkpoint of the run can be restored."""


def manager(directory: pathlib.Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    directory.absolute(),
    # A save cut short by a kill leaves a temporary folder; it is removed, never restored.
    options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, cleanup_tmp_directories=True),
  )


def save(checkpoints: ocp.CheckpointManager, round_count: int, state, rounds_key) -> None:
  """Save after ``round_count`` completed rounds (asynchronously: ``wait_until_finished``)."""
  item = {
    "state": state,
    "rng": np.asarray(jax.random.key_data(rounds_key)),  # host value: any process count
    "round": np.asarray(round_count, np.int64),
  }
  checkpoints.save(round_count, args=ocp.args.StandardSave(item))


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
