"""Masked losses for padded batches: pure functions over a batch axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """``sum_{mask} values / max(|mask|, 1)`` over the batch axis (``values`` ``[batch]``).
  Masked-out entries are selected away, not multiplied by 0, so a NaN there cannot leak."""
  total = jnp.where(mask, values, jnp.zeros_like(values)).sum()
  return total / jnp.maximum(mask.astype(values.dtype).sum(), 1.0)


def inert_padding(rows: jax.Array, mask: jax.Array) -> jax.Array:
  """``rows`` ``[batch, ...]`` with the rows where ``mask`` is False replaced by zeros: padding
  rows (whatever they hold, NaN included) then add nothing to a loss or its gradient."""
  keep = mask.reshape(mask.shape + (1,) * (rows.ndim - 1))
  return jnp.where(keep, rows, jnp.zeros_like(rows))


def per_example_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy ``[batch]``, averaged over any token axes between batch and class."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return losses.reshape(losses.shape[0], -1).mean(axis=1)


def per_example_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of correct argmax predictions per example ``[batch]`` (per token, averaged)."""
  correct = (logits.argmax(-1) == labels).astype(jnp.float32)
  return correct.reshape(correct.shape[0], -1).mean(axis=1)


def proximal_penalty(params, anchor, strength: float) -> jax.Array:
  """``strength / 2 * ||params - anchor||^2`` over every leaf; its gradient in ``params`` is
  ``strength * (params - anchor)``, ``anchor`` held fixed (FedProx's ``mu``, Ditto's
  ``lambda``)."""
  squares = jax.tree.map(lambda p, a: jnp.sum((p - jax.lax.stop_gradient(a)) ** 2), params, anchor)
  return 0.5 * strength * sum(jax.tree.leaves(squares))
