"""Masked losses for padded batches: pure functions over a batch axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """sum(mask * values) / max(sum(mask), 1) over the batch axis (``values`` ``[batch]``)."""
  mask = mask.astype(values.dtype)
  return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def per_example_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy ``[batch]``, averaged over any token axes between batch and class."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return losses.reshape(losses.shape[0], -1).mean(axis=1)


def per_example_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of correct argmax predictions per example ``[batch]`` (per token, averaged)."""
  correct = (logits.argmax(-1) == labels).astype(jnp.float32)
  return correct.reshape(correct.shape[0], -1).mean(axis=1)
