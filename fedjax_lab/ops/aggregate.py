"""Aggregation of stacked client pytrees (leaves ``[clients, ...]``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_mean(stacked, weights: jax.Array):
  """sum_k w_k * tree_k / sum_k w_k over the leading axis. All-zero weights give zeros."""
  weights = jnp.asarray(weights, jnp.float32)
  total = jnp.maximum(weights.sum(), jnp.finfo(jnp.float32).tiny)
  return jax.tree.map(
      lambda leaf: jnp.tensordot(weights / total, leaf, axes=1).astype(leaf.dtype), stacked)


def tree_broadcast(tree, size: int):
  """Stack ``size`` copies of ``tree`` along a new leading axis."""
  return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (size,) + leaf.shape), tree)


def tree_gather(stacked, indices):
  """Rows ``indices`` of every leaf of ``stacked`` (per-client state for a cohort)."""
  return jax.tree.map(lambda leaf: leaf[indices], stacked)


def tree_scatter(stacked, indices, rows):
  """``stacked`` with rows ``indices`` replaced by ``rows`` (write a cohort's state back)."""
  return jax.tree.map(lambda leaf, new: leaf.at[indices].set(new), stacked, rows)
