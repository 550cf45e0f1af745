"""Model-poisoning attacks on a cohort's updates, pure and jit-safe.

``updates [K, D]`` are the clients' model updates (contribution minus the model they started
from), ``malicious [K]`` marks the attacker's rows. Each attack returns the updates with the
malicious rows replaced; honest rows are never changed.

- ``sign_flip``: ``-strength * d`` (the honest direction reversed and amplified).
- ``scale``: ``strength * d`` (boosting, as in model replacement).
- ``gaussian``: ``N(0, strength^2)`` per coordinate, the honest update discarded.
- ``alie``: "A little is enough" (Baruch et al. 2019): every malicious row is
  ``mu - z * sigma``, ``mu`` and ``sigma`` the coordinate-wise mean and standard deviation of
  the honest rows, ``z = Phi^{-1}((K - s) / K)`` with ``s = floor(K / 2 + 1) - M`` (``M``
  malicious rows; ``alie_z``), passed as ``strength``: small enough per coordinate to pass
  median- and distance-based filters, the same for every attacker so they move the aggregate
  together.
"""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp

ATTACKS = ("sign_flip", "scale", "gaussian", "alie")


def alie_z(count: int, malicious: int) -> float:
  """Baruch et al.'s ``z_max`` for ``malicious`` of ``count`` rows (0 if none is needed); host
  side (plain Python), so it stays a constant inside a traced round."""
  supporters = count // 2 + 1 - malicious
  quantile = (count - supporters) / count
  return statistics.NormalDist().inv_cdf(min(max(quantile, 0.5), 1 - 1e-6))


def poison(
  kind: str, updates: jax.Array, malicious: jax.Array, strength: float, key: jax.Array
) -> jax.Array:
  """``updates`` with the ``malicious`` rows replaced by attack ``kind`` (module docstring)."""
  if kind == "sign_flip":
    attacked = -strength * updates
  elif kind == "scale":
    attacked = strength * updates
  elif kind == "gaussian":
    attacked = strength * jax.random.normal(key, updates.shape, updates.dtype)
  elif kind == "alie":
    honest = (~malicious).astype(updates.dtype)[:, None]
    count = jnp.maximum(honest.sum(), 1.0)
    mu = jnp.sum(honest * updates, axis=0) / count
    sigma = jnp.sqrt(jnp.sum(honest * jnp.square(updates - mu), axis=0) / count)
    attacked = jnp.broadcast_to(mu - strength * sigma, updates.shape)
  else:
    raise ValueError(f"attack.kind must be one of {', '.join(ATTACKS)}, got {kind!r}")
  return jnp.where(malicious[:, None], attacked, updates)


def malicious_rows(key: jax.Array, count: int, fraction: float) -> jax.Array:
  """``[count]`` bool: ``floor(fraction * count)`` rows chosen uniformly (a fresh draw per
  key: the attacker holds that share of every cohort)."""
  return jax.random.permutation(key, count) < int(fraction * count)
