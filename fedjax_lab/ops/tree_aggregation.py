"""Aggregation up and down a federation tree, as segment operations over a node axis.

Arrays of a tree (``data.tree.FederationTree``): ``parent_of [num_nodes]`` (``-1`` at the root,
node 0, parents before children) and ``depth [num_nodes]``, both static numpy arrays; values
are pytrees whose leaves carry a leading node axis ``[num_nodes, ...]``. A pass over the tree
is a Python loop over depths (a handful, static), each level one ``segment_sum`` /
``segment_max`` over all nodes: never a loop over nodes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SIMILARITIES = ("cosine", "dot")
_TINY = jnp.finfo(jnp.float32).tiny


def flat_rows(stacked) -> jax.Array:
  """``[n, d]``: every leaf of ``stacked`` flattened per row and concatenated, in float32."""
  leaves = jax.tree.leaves(stacked)
  return jnp.concatenate(
    [leaf.reshape(leaf.shape[0], -1).astype(jnp.float32) for leaf in leaves], 1
  )


def row_similarity(a: jax.Array, b: jax.Array, kind: str) -> jax.Array:
  """``[n]``: row-wise similarity of ``[n, d]`` arrays. ``cosine``: ``<a, b> / (|a| |b|)``;
  ``dot``: ``<a, b> / d`` (the scaled dot product; divided by ``d`` so it does not grow with
  the number of parameters)."""
  dot = (a * b).sum(1)
  if kind == "cosine":
    norms = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
    return dot / jnp.maximum(norms, _TINY)
  return dot / a.shape[1]


def segment_softmax(scores, segment_ids, num_segments: int, mask) -> jax.Array:
  """``w_i = mask_i exp(s_i - m_g) / sum_{j in g, mask_j} exp(s_j - m_g)`` for the segment
  ``g = segment_ids[i]``, ``m_g`` its largest unmasked score: weights sum to one in every
  segment with an unmasked member; masked members get 0."""
  scores = jnp.where(mask, scores, -jnp.inf)
  peak = jax.ops.segment_max(scores, segment_ids, num_segments)
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
  exps = jnp.where(mask, jnp.exp(scores - peak[segment_ids]), 0.0)
  totals = jax.ops.segment_sum(exps, segment_ids, num_segments)
  return exps / jnp.maximum(totals[segment_ids], _TINY)


def _segment_combine(values, weights, segment_ids, num_segments):
  """``sum_{i: s_i = g} w_i values_i`` per segment ``g``, ``[num_segments, ...]``."""
  return jax.tree.map(
    lambda leaf: jax.ops.segment_sum(
      leaf * weights.reshape((-1,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype),
      segment_ids,
      num_segments,
    ),
    values,
  )


def _replace_rows(values, new, rows: np.ndarray):
  """``values`` with the rows where ``rows`` (a static boolean ``[num_nodes]``) is true taken
  from ``new``."""
  keep = jnp.asarray(rows)
  return jax.tree.map(
    lambda old, fresh: jnp.where(keep.reshape((-1,) + (1,) * (old.ndim - 1)), fresh, old),
    values,
    new,
  )


def _parents(parent_of: np.ndarray) -> np.ndarray:
  """``parent_of`` with the root's ``-1`` replaced by 0 (a valid segment; the root is always
  masked out as a child)."""
  return np.maximum(np.asarray(parent_of), 0)


def tree_mean(values, weights, parent_of: np.ndarray, depth: np.ndarray, *, up_to: int = 0):
  """Token-weighted means up the tree: from the deepest level to depth ``up_to``, every
  internal node at that depth becomes ``sum_c w_c values_c / sum_c w_c`` over its children
  ``c``, and its weight ``sum_c w_c``. Leaves (and nodes deeper than their subtree's data)
  keep their rows. Nodes without weight below them keep their values.

  Args:
    values: pytree, leaves ``[num_nodes, ...]``; the leaves' rows are what is averaged.
    weights: ``[num_nodes]`` the leaves' weights (token counts); internal rows are ignored.
    parent_of, depth: the tree (module docstring).
    up_to: the shallowest depth that is averaged (0: up to the root).

  Returns:
    ``(values, weights)`` with every internal node at depth ``>= up_to`` averaged. At the root
    this equals the flat weighted mean over the leaves (the mean of means, weighted by totals).
  """
  parents, num_nodes = _parents(parent_of), len(parent_of)
  internal = np.zeros(num_nodes, bool)
  internal[np.unique(parents[1:])] = True
  weights = jnp.where(jnp.asarray(internal), 0.0, jnp.asarray(weights, jnp.float32))
  for level in range(int(depth.max()) - 1, up_to - 1, -1):
    child = jnp.asarray(depth == level + 1) & (weights > 0)
    child_weight = jnp.where(child, weights, 0.0)
    totals = jax.ops.segment_sum(child_weight, parents, num_nodes)
    scale = child_weight / jnp.maximum(totals[parents], _TINY)
    means = _segment_combine(values, scale, parents, num_nodes)
    updated = (depth == level) & internal
    has_data = jnp.asarray(updated) & (totals > 0)
    values = jax.tree.map(
      lambda old, new: jnp.where(has_data.reshape((-1,) + (1,) * (old.ndim - 1)), new, old),
      values,
      means,
    )
    weights = jnp.where(jnp.asarray(updated), totals, weights)
  return values, weights


def attention_aggregate(
  previous,
  children,
  child_parent,
  mask,
  num_nodes: int,
  *,
  similarity: str,
  temperature: float,
  include_parent: bool,
):
  """One level of attentive aggregation: parent ``p``'s new value is
  ``sum_c alpha_c children_c`` over its unmasked children (and, if ``include_parent``, its own
  ``previous`` row as one more candidate), ``alpha = softmax_c(sim(previous_p, x_c) / T)``
  (``segment_softmax`` per parent).

  Args:
    previous: pytree ``[num_nodes, ...]``, each parent's value before this round (the query).
    children: pytree ``[m, ...]``, the candidates.
    child_parent: ``[m]`` int, each candidate's parent node.
    mask: ``[m]`` bool, candidates that take part (padding and empty children do not).
    num_nodes: the node count (segments).
    similarity: ``cosine`` or ``dot`` (``row_similarity``).
    temperature: ``T > 0``.
    include_parent: whether each parent with a candidate also attends to itself.

  Returns:
    ``(new [num_nodes, ...], child_weights [m], self_weights [num_nodes])``; a parent with no
    unmasked child keeps its ``previous`` value (its weights are zero).
  """
  child_parent = jnp.asarray(child_parent)
  has_child = jax.ops.segment_sum(mask.astype(jnp.int32), child_parent, num_nodes) > 0
  self_mask = has_child & include_parent
  candidates = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), children, previous)
  owners = jnp.concatenate([child_parent, jnp.arange(num_nodes)])
  take = jnp.concatenate([mask, self_mask])
  queries = flat_rows(previous)[owners]
  scores = row_similarity(queries, flat_rows(candidates), similarity) / temperature
  alpha = segment_softmax(scores, owners, num_nodes, take)
  new = _segment_combine(candidates, alpha, owners, num_nodes)
  new = jax.tree.map(
    lambda fresh, old: jnp.where(has_child.reshape((-1,) + (1,) * (old.ndim - 1)), fresh, old),
    new,
    previous,
  )
  m = mask.shape[0]
  return new, alpha[:m], alpha[m:]


def tree_attention(
  previous,
  weights,
  parent_of: np.ndarray,
  depth: np.ndarray,
  *,
  similarity: str,
  temperature: float,
  include_parent: bool,
  up_to: int = 0,
):
  """Attentive aggregation bottom-up: from the deepest level to depth ``up_to``, each internal
  node attends over its children's values (leaves: their rows of ``previous``; internal
  children: the value just aggregated) with ``attention_aggregate``, querying with its own
  ``previous`` row. Children without weight (no tokens below them) are masked.

  Returns:
    ``(values [num_nodes, ...], child_weight [num_nodes])``: ``child_weight[v]`` is the
    weight node ``v`` received from its parent's softmax (0 at the root and for masked
    nodes), and at each internal node ``p`` the self weight is ``1 - sum of its children's``.
  """
  parents, num_nodes = _parents(parent_of), len(parent_of)
  internal = np.zeros(num_nodes, bool)
  internal[np.unique(parents[1:])] = True
  below = jnp.where(jnp.asarray(internal), 0.0, jnp.asarray(weights, jnp.float32))
  values, received = previous, jnp.zeros(num_nodes, jnp.float32)
  for level in range(int(depth.max()) - 1, up_to - 1, -1):
    child = jnp.asarray(depth == level + 1) & (below > 0)
    below = below + jax.ops.segment_sum(jnp.where(child, below, 0.0), parents, num_nodes)
    new, alpha, _ = attention_aggregate(
      previous,
      values,
      parents,
      child,
      num_nodes,
      similarity=similarity,
      temperature=temperature,
      include_parent=include_parent,
    )
    values = _replace_rows(values, new, (depth == level) & internal)
    received = jnp.where(child, alpha, received)
  return values, received


def residual_exchange(
  values,
  parent_of: np.ndarray,
  depth: np.ndarray,
  rows: np.ndarray,
  *,
  similarity: str,
  temperature: float,
):
  """Residual layer embeddings, exchanged across federations, top-down.

  A node's residual embedding is ``r_v = values_v - values_parent(v)``, what it adds to what
  it inherits. At each depth ``d >= 1`` the nodes in ``rows`` (a static boolean
  ``[num_nodes]``, e.g. the internal nodes) attend over every such node at the same depth,
  across federations, themselves included:
  ``r~_v = sum_u softmax_u(sim(r_v, r_u) / T) r_u``, and the new value is
  ``values'_v = values'_parent(v) + r~_v`` (the parent's already exchanged value). A node that
  resembles no other keeps ``r~_v ~ r_v`` (its self-similarity is the largest); ``T -> 0``
  changes nothing. Nodes outside ``rows`` keep their values.

  Returns:
    ``(values', weights [num_nodes, num_nodes])``: row ``v`` holds the attention weights node
    ``v`` gave at its depth (zeros outside ``rows``).
  """
  parents, num_nodes = _parents(parent_of), len(parent_of)
  residual = jax.tree.map(lambda leaf: leaf - leaf[parents], values)
  flat = flat_rows(residual)
  new, mixing = values, jnp.zeros((num_nodes, num_nodes), jnp.float32)
  for level in range(1, int(depth.max()) + 1):
    at_level = np.asarray(rows) & (depth == level)
    if not at_level.any():
      continue
    members = np.flatnonzero(at_level)
    keys = flat[members]
    scores = jax.vmap(lambda q: row_similarity(jnp.broadcast_to(q, keys.shape), keys, similarity))
    weights = jax.nn.softmax(scores(keys) / temperature, axis=1)
    mixed = jax.tree.map(lambda leaf: jnp.tensordot(weights, leaf[members], axes=1), residual)
    new = jax.tree.map(
      lambda current, mix: current.at[members].set(current[parents[members]] + mix), new, mixed
    )
    mixing = mixing.at[np.ix_(members, members)].set(weights)
  return new, mixing
