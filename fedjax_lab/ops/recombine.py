"""Layer-wise model recombination (FedMR, Hu et al., KDD 2024).

Given ``m`` models stacked on a leading slot axis, each *recombination unit* (a leaf, a layer,
or a block of consecutive leaves) draws its own permutation ``pi_u`` of the slots, and
``new[i][u] = old[pi_u(i)][u]``: every old slot's unit is used exactly once, so the slot mean of
every parameter is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax

GRANULARITIES = ("leaf", "layer", "block")


def recombination_units(
  params, layer_order: Sequence[str], granularity: str, block_fraction: float = 0.0
):
  """A pytree like ``params`` (one model, no slot axis) holding each leaf's unit id (int).

  ``leaf``: every tensor moves alone (the official code: each state-dict entry).
  ``layer``: the leaves of one top-level layer group share a unit (the paper's wording).
  ``block``: leaves, in layer order, are cut into blocks of ``ceil(block_fraction * L)``
  consecutive leaves (the code's ``FedMR_Partition(p)``; ``p = 0`` is per leaf).
  """
  if granularity not in GRANULARITIES:
    raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
  if not 0.0 <= block_fraction <= 1.0:
    raise ValueError(f"block_fraction must be in [0, 1], got {block_fraction}")
  ordered = [
    (name, path)
    for name in layer_order
    for path, _ in jax.tree_util.tree_flatten_with_path(params[name])[0]
  ]
  block = max(1, math.ceil(block_fraction * len(ordered)))
  unit_of = {}
  for index, (name, path) in enumerate(ordered):
    unit_of[(name, path)] = {
      "leaf": index,
      "layer": layer_order.index(name),
      "block": index // block,
    }[granularity]
  return {
    name: jax.tree_util.tree_map_with_path(lambda path, _: unit_of[(name, path)], params[name])
    for name in layer_order
  }


def recombine(key: jax.Array, stacked, units):
  """``new[i][u] = old[pi_u(i)][u]`` with an independent permutation ``pi_u`` per unit id.

  ``stacked``: leaves ``[m, ...]``; ``units``: the same tree structure of Python int unit ids
  (static: close over them when jitting).
  """
  num_slots = jax.tree.leaves(stacked)[0].shape[0]
  num_units = max(jax.tree.leaves(units)) + 1
  permutations = jax.vmap(lambda k: jax.random.permutation(k, num_slots))(
    jax.random.split(key, num_units)
  )
  return jax.tree.map(lambda leaf, unit: leaf[permutations[unit]], stacked, units)
