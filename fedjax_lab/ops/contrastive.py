"""MOON's model-contrastive loss (Li, He and Song, "Model-Contrastive Federated Learning",
CVPR 2021), pure and vmap-safe.

For one example with the local model's representation ``z``, the received global model's
``z_glob`` and the client's previous local model's ``z_prev``, and ``sim`` the cosine
similarity:

    l_con = -log(e^(sim(z, z_glob) / tau) / (e^(sim(z, z_glob) / tau) + e^(sim(z, z_prev) / tau)))

the cross-entropy of picking ``z_glob`` (the positive) over ``z_prev`` (the negative). It pulls
the local representation towards the global model's and away from the drifted previous one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_lab.ops.losses import masked_mean


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """``[batch]``: cosine of each example's flattened representations ``a[i]`` and ``b[i]``."""
  a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
  norms = jnp.maximum(jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1), eps)
  return (a * b).sum(1) / norms


def model_contrastive_loss(
  z: jax.Array,
  z_global: jax.Array,
  z_previous: jax.Array,
  temperature: float,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Masked mean over the batch of ``l_con`` (module docstring); no gradient flows into
  ``z_global`` or ``z_previous``."""
  logits = jnp.stack(
    [
      cosine_similarity(z, jax.lax.stop_gradient(z_global)),
      cosine_similarity(z, jax.lax.stop_gradient(z_previous)),
    ],
    axis=1,
  )
  losses = -jax.nn.log_softmax(logits / temperature, axis=1)[:, 0]
  return losses.mean() if mask is None else masked_mean(losses, mask)
