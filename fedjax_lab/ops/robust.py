"""Byzantine-robust reductions of a cohort, pure and jit/vmap-safe.

Each takes the cohort's contributions flattened to ``values [K, D]`` (one row per client,
``flatten_cohort``) and weights ``[K]``; a zero weight marks a row that does not count. The
distance-based rules (Krum, geometric median, centered clipping) see each client's whole model
as one vector, as their papers define them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

_TINY = 1e-12


def flatten_cohort(stacked):
  """``([K, D] rows, unflatten)``: each client's pytree raveled; ``unflatten(row)`` gives a
  pytree back."""
  one = jax.tree.map(lambda leaf: leaf[0], stacked)
  _, unflatten = ravel_pytree(one)
  rows = jax.vmap(lambda tree: ravel_pytree(tree)[0])(stacked)
  return rows, unflatten


def weighted_median(values: jax.Array, weights: jax.Array) -> jax.Array:
  """Coordinate-wise weighted median over the leading axis of ``values [cohort, ...]``: per
  coordinate, the smallest value whose cumulative weight (values sorted) reaches half the total.
  Zero-weight rows never count; with equal weights and an even count it is the lower median."""
  order = jnp.argsort(values, axis=0)
  sorted_values = jnp.take_along_axis(values, order, axis=0)
  expand = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
  sorted_weights = jnp.take_along_axis(jnp.broadcast_to(expand, values.shape), order, axis=0)
  cumulative = jnp.cumsum(sorted_weights, axis=0)
  first = jnp.argmax(cumulative >= 0.5 * cumulative[-1:], axis=0)
  return jnp.take_along_axis(sorted_values, first[None], axis=0)[0]


def trimmed_mean(values: jax.Array, weights: jax.Array, trim: int) -> jax.Array:
  """Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the ``trim`` lowest
  and ``trim`` highest values, then the weighted mean of the rest. ``values [K, ...]``."""
  count = values.shape[0]
  order = jnp.argsort(values, axis=0)
  sorted_values = jnp.take_along_axis(values, order, axis=0)
  expand = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
  sorted_weights = jnp.take_along_axis(jnp.broadcast_to(expand, values.shape), order, axis=0)
  position = jnp.arange(count).reshape((count,) + (1,) * (values.ndim - 1))
  kept = ((position >= trim) & (position < count - trim)) * sorted_weights
  return jnp.sum(kept * sorted_values, axis=0) / jnp.maximum(jnp.sum(kept, axis=0), _TINY)


def _squared_distances(values: jax.Array) -> jax.Array:
  norms = jnp.sum(jnp.square(values), axis=1)
  gram = values @ values.T
  return jnp.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)


def krum_scores(values: jax.Array, weights: jax.Array, byzantine: int) -> jax.Array:
  """Krum's score of each row (Blanchard et al. 2017): the sum of its squared distances to
  its ``n - f - 2`` nearest other rows, ``n`` the rows with weight > 0, ``f = byzantine``.
  Rows of weight 0 score ``inf`` and are nobody's neighbour."""
  present = weights > 0
  distances = _squared_distances(values)
  unusable = ~present[None, :] | jnp.eye(values.shape[0], dtype=bool)
  distances = jnp.where(unusable, jnp.inf, distances)
  neighbours = jnp.maximum(jnp.sum(present) - byzantine - 2, 1)
  nearest = jnp.sort(distances, axis=1)
  rank = jnp.arange(values.shape[0])[None, :]
  scores = jnp.sum(jnp.where(rank < neighbours, nearest, 0.0), axis=1)
  return jnp.where(present, scores, jnp.inf)


def multi_krum(values: jax.Array, weights: jax.Array, byzantine: int, selected: int) -> jax.Array:
  """The weighted mean of the ``selected`` rows with the lowest Krum scores (Multi-Krum;
  ``selected=1`` is Krum)."""
  scores = krum_scores(values, weights, byzantine)
  rank = jnp.argsort(jnp.argsort(scores, stable=True), stable=True)
  chosen = (rank < selected) & jnp.isfinite(scores)
  chosen_weights = jnp.where(chosen, weights, 0.0)
  return chosen_weights @ values / jnp.maximum(chosen_weights.sum(), _TINY)


def geometric_median(
  values: jax.Array, weights: jax.Array, iterations: int, eps: float = 1e-8
) -> jax.Array:
  """The weighted geometric median ``argmin_z sum_k w_k ||x_k - z||`` by Weiszfeld's
  iterations (Pillutla et al. 2022, RFA): ``z <- sum_k beta_k x_k / sum_k beta_k`` with
  ``beta_k = w_k / max(||x_k - z||, eps)``, from the coordinate-wise median (a start that
  outliers cannot drag away, so few iterations suffice)."""

  def step(_, z):
    beta = weights / jnp.maximum(jnp.linalg.norm(values - z, axis=1), eps)
    return beta @ values / jnp.maximum(beta.sum(), _TINY)

  return jax.lax.fori_loop(0, iterations, step, weighted_median(values, weights))


def centered_clip(
  values: jax.Array, weights: jax.Array, center: jax.Array, radius: float, iterations: int
) -> jax.Array:
  """Centered clipping (Karimireddy et al. 2021): from ``center``, ``v <- v + sum_k w_k
  clip(x_k - v, radius) / sum_k w_k`` (``clip`` scales a vector to norm at most ``radius``),
  ``iterations`` times. One client moves the result by at most ``radius * w_k / sum w``."""

  def step(_, v):
    offsets = values - v
    norms = jnp.linalg.norm(offsets, axis=1, keepdims=True)
    clipped = offsets * jnp.minimum(1.0, radius / jnp.maximum(norms, _TINY))
    return v + weights @ clipped / jnp.maximum(weights.sum(), _TINY)

  return jax.lax.fori_loop(0, iterations, step, center)
