"""Aggregation of stacked client pytrees (leaves ``[clients, ...]``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_mean(stacked, weights: jax.Array):
  """sum_k w_k * tree_k / sum_k w_k over the leading axis. All-zero weights give zeros."""
  weights = jnp.asarray(weights, jnp.float32)
  total = jnp.maximum(weights.sum(), jnp.finfo(jnp.float32).tiny)
  return jax.tree.map(
    lambda leaf: jnp.tensordot(weights / total, leaf, axes=1).astype(leaf.dtype), stacked
  )


def client_sum(stacked):
  """Each leaf summed over its leading (client) axis, as a product with a vector of ones:
  XLA:CPU runs ``leaf.sum(0)`` of a [100, 784, 200] stack 75x slower than this dot (213 ms
  against 3 ms)."""
  return jax.tree.map(
    lambda leaf: jnp.tensordot(jnp.ones(leaf.shape[0], leaf.dtype), leaf, axes=1), stacked
  )


def tree_broadcast(tree, size: int):
  """Stack ``size`` copies of ``tree`` along a new leading axis."""
  return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (size,) + leaf.shape), tree)


def tree_gather(stacked, indices):
  """Rows ``indices`` of every leaf of ``stacked`` (per-client state for a cohort)."""
  return jax.tree.map(lambda leaf: leaf[indices], stacked)


def tree_gather_or(stacked, indices, present: jax.Array, default):
  """Rows ``indices`` of ``stacked`` where ``present[indices]``, else ``default`` (one model,
  broadcast): a cohort's per-client state with a fallback for clients that have none yet."""
  keep = present[indices]
  return jax.tree.map(
    lambda rows, shared: jnp.where(keep.reshape((-1,) + (1,) * shared.ndim), rows, shared),
    tree_gather(stacked, indices),
    default,
  )


def tree_select(keep: jax.Array, rows, others):
  """Row ``k`` of ``rows`` where ``keep[k]``, else row ``k`` of ``others`` (both stacked)."""
  return jax.tree.map(lambda new, old: jnp.where(_expand(keep, new), new, old), rows, others)


def tree_scatter(stacked, indices, rows):
  """``stacked`` with rows ``indices`` replaced by ``rows`` (write a cohort's state back)."""
  return jax.tree.map(lambda leaf, new: leaf.at[indices].set(new), stacked, rows)


def segment_mean(stacked, weights: jax.Array, segment_ids: jax.Array, num_segments: int):
  """Per-segment weighted means ``[num_segments, ...]``, ``sum_{i: s_i = c} w_i tree_i /
  sum_{i: s_i = c} w_i`` (segment sums over the client axis), and the totals
  ``[num_segments]``. A segment without weight gets zeros."""
  weights = jnp.asarray(weights, jnp.float32)
  totals = jax.ops.segment_sum(weights, segment_ids, num_segments)
  scale = weights / jnp.maximum(totals[segment_ids], jnp.finfo(jnp.float32).tiny)
  means = jax.tree.map(
    lambda leaf: jax.ops.segment_sum(leaf * _expand(scale, leaf), segment_ids, num_segments).astype(
      leaf.dtype
    ),
    stacked,
  )
  return means, totals


def cluster_mean(stacked, weights: jax.Array, labels: jax.Array):
  """Each client's cluster average, ``[clients, ...]``: row ``i`` is
  ``sum_{j: c_j = c_i} w_j tree_j / sum_{j: c_j = c_i} w_j`` (``labels`` in
  ``[0, clients)``). A cluster whose weights are all zero gets zeros."""
  means, _ = segment_mean(stacked, weights, labels, labels.shape[0])
  return tree_gather(means, labels)


def neighbourhood_mean(stacked, weights: jax.Array, adjacency: jax.Array):
  """Row ``i``: ``sum_j A_ij w_j tree_j / sum_j A_ij w_j`` for a boolean ``adjacency [N, N]``
  (each client's collaborators, itself included): row-normalized mixing weights."""
  mixing = adjacency.astype(jnp.float32) * jnp.asarray(weights, jnp.float32)[None, :]
  mixing = mixing / jnp.maximum(mixing.sum(1, keepdims=True), jnp.finfo(jnp.float32).tiny)
  return jax.tree.map(lambda leaf: jnp.tensordot(mixing, leaf, axes=1).astype(leaf.dtype), stacked)


def _expand(per_client: jax.Array, leaf: jax.Array) -> jax.Array:
  return per_client.reshape(per_client.shape + (1,) * (leaf.ndim - 1))
