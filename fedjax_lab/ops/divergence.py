"""Weight-divergence diagnostics of stacked client models.

Models stay pytrees: norms and inner products are sums of per-leaf terms, so no function here
flattens a model into one concatenated vector (a copy of the whole model that XLA:CPU cannot
fuse into the reduction; after a client's training loop it cost 10-55 ms a client on the
FEMNIST CNN, against under 1 ms for the per-leaf form: docs/performance.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def unit_vector(params):
  """``params / ||params||``, the norm taken over every leaf (a pytree like ``params``)."""
  norm = jnp.maximum(optax.tree.norm(params), 1e-12)
  return jax.tree.map(lambda leaf: leaf / norm, params)


def mean_pairwise_cosine(stacked) -> jax.Array:
  """Mean over slot pairs ``i != j`` of cos(theta_i, theta_j), the flattened models (the
  weight-divergence diagnostic FedMR plots; 1 means identical directions). The Gram matrix is
  the sum of the per-leaf Gram matrices of the unit models."""
  unit = jax.vmap(unit_vector)(stacked)
  rows = [leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(unit)]
  gram = sum(r @ r.T for r in rows)
  m = gram.shape[0]
  return (gram.sum() - jnp.trace(gram)) / max(m * (m - 1), 1)


def mean_pairwise_cosine_from_sum(unit_sum, count) -> jax.Array:
  """The same mean from ``s = sum_i u_i`` of ``count`` unit models (a pytree), without the
  stack: ``sum_{i != j} u_i . u_j = ||s||^2 - count``, so the mean is that over
  ``count (count - 1)`` (what a cohort accumulated chunk by chunk can still report)."""
  return (optax.tree.norm(unit_sum, squared=True) - count) / jnp.maximum(count * (count - 1), 1)
