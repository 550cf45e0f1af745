"""Weight-divergence diagnostics of stacked client models."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def unit_vector(params) -> jax.Array:
  """One model flattened into a vector and scaled to unit length."""
  flat = jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(params)])
  return flat / jnp.maximum(jnp.linalg.norm(flat), 1e-12)


def mean_pairwise_cosine(stacked) -> jax.Array:
  """Mean over slot pairs ``i != j`` of cos(theta_i, theta_j), the flattened models (the
  weight-divergence diagnostic FedMR plots; 1 means identical directions)."""
  unit = jax.vmap(unit_vector)(stacked)
  gram = unit @ unit.T
  m = gram.shape[0]
  return (gram.sum() - jnp.trace(gram)) / max(m * (m - 1), 1)


def mean_pairwise_cosine_from_sum(unit_sum: jax.Array, count) -> jax.Array:
  """The same mean from ``s = sum_i u_i`` of ``count`` unit vectors, without the stack:
  ``sum_{i != j} u_i . u_j = ||s||^2 - count``, so the mean is that over ``count (count - 1)``
  (what a cohort accumulated chunk by chunk can still report)."""
  return (jnp.sum(unit_sum**2) - count) / jnp.maximum(count * (count - 1), 1)
