"""Weight-divergence diagnostics of stacked client models."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mean_pairwise_cosine(stacked) -> jax.Array:
  """Mean over slot pairs ``i != j`` of cos(theta_i, theta_j), the flattened models (the
  weight-divergence diagnostic FedMR plots; 1 means identical directions)."""
  flat = jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(stacked)],
                         axis=1)
  unit = flat / jnp.maximum(jnp.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
  gram = unit @ unit.T
  m = gram.shape[0]
  return (gram.sum() - jnp.trace(gram)) / max(m * (m - 1), 1)
