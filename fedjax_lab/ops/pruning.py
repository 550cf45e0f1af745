"""Pruning masks as pure, vmap-safe functions over parameter pytrees.

A mask is a pytree of float32 0/1 arrays shaped like the parameters. Only *weight* leaves
(``ndim >= 2``: dense and convolution kernels) are pruned; biases and norm scales are kept
(mask 1). The pruning ratio ``rho`` may be a traced scalar, so a cohort's masks are one
``vmap`` over a ``[cohort]`` vector of ratios.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

VALUE_BYTES = 4  # float32 values of a pruned upload


def _prunable(leaf) -> bool:
  return leaf.ndim >= 2


def _keep_largest(scores: jax.Array, rho) -> jax.Array:
  """0/1 over ``scores`` (flat) keeping exactly ``size - floor(rho * size)`` entries, the
  largest; ties go to the lower index (a stable order), so the count is exact."""
  size = scores.shape[0]
  num_pruned = jnp.floor(jnp.asarray(rho, jnp.float32) * size).astype(jnp.int32)
  order = jnp.argsort(-scores, stable=True)
  rank = jnp.zeros(size, jnp.int32).at[order].set(jnp.arange(size, dtype=jnp.int32))
  return (rank < size - num_pruned).astype(jnp.float32)


def magnitude_mask(params, rho, structured: bool = False):
  """Per layer (leaf), keep the ``1 - rho`` fraction of largest-magnitude weights.

  Unstructured: each weight is scored by ``|w|`` and exactly ``size - floor(rho * size)``
  are kept. Structured: each output unit (the last axis: a dense layer's neuron, a
  convolution's output channel) is scored by the L2 norm of its weights, and whole units are
  kept (``units - floor(rho * units)``). Leaves with ``ndim < 2`` get mask 1."""

  def leaf_mask(leaf):
    if not _prunable(leaf):
      return jnp.ones(leaf.shape, jnp.float32)
    if structured:
      units = leaf.reshape(-1, leaf.shape[-1])
      keep = _keep_largest(jnp.sqrt(jnp.sum(jnp.square(units), axis=0)), rho)
      return jnp.broadcast_to(keep, leaf.shape).astype(jnp.float32)
    return _keep_largest(jnp.abs(leaf).ravel(), rho).reshape(leaf.shape)

  return jax.tree.map(leaf_mask, params)


def random_mask(key: jax.Array, params, rho):
  """As ``magnitude_mask`` (unstructured) with uniform random scores: each layer keeps a
  uniformly random subset of exactly ``size - floor(rho * size)`` weights."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  masks = [
    _keep_largest(jax.random.uniform(k, (leaf.size,)), rho).reshape(leaf.shape)
    if _prunable(leaf)
    else jnp.ones(leaf.shape, jnp.float32)
    for k, leaf in zip(keys, leaves)
  ]
  return jax.tree.unflatten(treedef, masks)


def apply_mask(tree, mask):
  """``tree * mask`` leafwise: parameters, or gradients (so masked weights stay zero)."""
  return jax.tree.map(lambda leaf, m: (leaf * m).astype(leaf.dtype), tree, mask)


def mask_aware_mean(mean_kept, mean_mask, fallback):
  """Each weight averaged over the clients that kept it.

  Given the weighted cohort means ``mean_kept = sum_n w_n m_n x_n / sum_n w_n`` and
  ``mean_mask = sum_n w_n m_n / sum_n w_n`` (one ordinary weighted mean of the pair
  ``(m_n * x_n, m_n)``), returns ``sum_n w_n m_n x_n / sum_n w_n m_n``; a weight no client
  kept takes its ``fallback`` value (the model the clients started from)."""

  def leaf(kept, share, old):
    return jnp.where(share > 0, kept / jnp.where(share > 0, share, 1.0), old).astype(old.dtype)

  return jax.tree.map(leaf, mean_kept, mean_mask, fallback)


def kept_fraction(mask) -> jax.Array:
  """Fraction of all mask entries kept (1 - sparsity), over every leaf."""
  kept = sum(jnp.sum(m) for m in jax.tree.leaves(mask))
  return kept / sum(m.size for m in jax.tree.leaves(mask))


def upload_bytes(mask) -> jax.Array:
  """Bytes of a pruned upload, encoded as a bitmap per pruned leaf (one bit per weight,
  ``ceil(size / 8)`` bytes) plus the kept values (``VALUE_BYTES`` each); unpruned leaves
  (``ndim < 2``) are sent dense without a bitmap. A bitmap beats an index list (4 bytes per
  kept weight) whenever more than 1/32 of the weights are kept."""
  total = jnp.zeros((), jnp.float32)
  for m in jax.tree.leaves(mask):
    bitmap = -(-m.size // 8) if m.ndim >= 2 else 0
    total = total + VALUE_BYTES * jnp.sum(m) + bitmap
  return total
