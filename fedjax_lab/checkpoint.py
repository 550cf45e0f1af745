"""Orbax checkpoints of (algorithm state, RNG key, round)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(directory: pathlib.Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
  )


def save(checkpoints: ocp.CheckpointManager, round_count: int, state, rounds_key) -> None:
  """Save after ``round_count`` completed rounds."""
  item = {
    "state": state,
    "rng": np.asarray(jax.random.key_data(rounds_key)),  # host value: any process count
    "round": np.asarray(round_count, np.int64),
  }
  checkpoints.save(round_count, args=ocp.args.StandardSave(item))


def restore(checkpoints: ocp.CheckpointManager, like_state, rounds_key):
  """``(state, completed_rounds)`` from the latest checkpoint; ``like_state`` gives the
  structure. The saved RNG key must be the one this config's seed derives."""
  abstract = {
    "state": jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state),
    "rng": ocp.utils.to_shape_dtype_struct(jax.random.key_data(rounds_key)),
    "round": ocp.utils.to_shape_dtype_struct(np.asarray(0, np.int64)),
  }
  item = checkpoints.restore(checkpoints.latest_step(), args=ocp.args.StandardRestore(abstract))
  if not np.array_equal(np.asarray(item["rng"]), np.asarray(jax.random.key_data(rounds_key))):
    raise ValueError("the checkpoint was written with a different seed than this config's")
  return item["state"], int(item["round"])
