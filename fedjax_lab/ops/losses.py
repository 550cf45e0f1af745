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


TOP_K = 5  # a multi-label example's predicted labels: its TOP_K largest logits


def is_multi_label(logits: jax.Array, labels: jax.Array) -> bool:
  """Labels with as many axes as the logits are label sets: ``[batch, k]`` class ids, ``-1``
  padding (StackOverflow's tags); labels with one axis fewer are one class per example (or
  per token)."""
  return labels.ndim == logits.ndim


def label_set_indicator(labels: jax.Array, num_classes: int) -> jax.Array:
  """``[batch, num_classes]`` 0/1: which classes each example's label set ``[batch, k]``
  holds (``-1`` padding holds none)."""
  return jax.nn.one_hot(labels, num_classes).max(axis=-2)


def per_example_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The loss ``[batch]``: softmax cross-entropy, averaged over any token axes between batch
  and class; for label sets (``is_multi_label``) the sigmoid cross-entropy of each class
  against whether the set holds it, averaged over the classes (Keras' binary
  cross-entropy, TFF's StackOverflow tag-prediction loss)."""
  if is_multi_label(logits, labels):
    targets = label_set_indicator(labels, logits.shape[-1])
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return losses.reshape(losses.shape[0], -1).mean(axis=1)


def per_example_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of correct argmax predictions per example ``[batch]`` (per token, averaged);
  for label sets, recall at ``TOP_K``: the share of an example's labels among its ``TOP_K``
  largest logits (all of them when there are fewer classes) (0 for an example with an empty set)."""
  if is_multi_label(logits, labels):
    targets = label_set_indicator(labels, logits.shape[-1])
    k = min(TOP_K, logits.shape[-1])
    top = jax.nn.one_hot(jax.lax.top_k(logits, k)[1], logits.shape[-1]).max(axis=-2)
    return (top * targets).sum(-1) / jnp.maximum(targets.sum(-1), 1.0)
  correct = (logits.argmax(-1) == labels).astype(jnp.float32)
  return correct.reshape(correct.shape[0], -1).mean(axis=1)


def proximal_penalty(params, anchor, strength: float) -> jax.Array:
  """``strength / 2 * ||params - anchor||^2`` over every leaf; its gradient in ``params`` is
  ``strength * (params - anchor)``, ``anchor`` held fixed (FedProx's ``mu``, Ditto's
  ``lambda``)."""
  squares = jax.tree.map(lambda p, a: jnp.sum((p - jax.lax.stop_gradient(a)) ** 2), params, anchor)
  return 0.5 * strength * sum(jax.tree.leaves(squares))
