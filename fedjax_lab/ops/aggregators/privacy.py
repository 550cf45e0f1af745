"""Privacy pieces: per-client update clipping (whole or per layer), local and central Gaussian
noise, and DP-FedAvg with adaptive clipping (Andrew et al. 2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from fedjax_lab.ops import robust
from fedjax_lab.ops.aggregators.contract import (
  Aggregator,
  ClientTransform,
  ServerTransform,
  no_state,
)


def add_gaussian_noise(tree, stddev: float, key: jax.Array):
  """``tree + N(0, stddev^2)`` on every coordinate, one key per leaf (split from ``key``),
  each leaf kept in its dtype: the noise of local DP (per client) and central DP (on the
  aggregate)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  noisy = [
    (leaf + stddev * jax.random.normal(k, leaf.shape)).astype(leaf.dtype)
    for k, leaf in zip(keys, leaves)
  ]
  return jax.tree.unflatten(treedef, noisy)


def clip_update_norm(max_norm: float) -> ClientTransform:
  """Clip each client's update ``d = c - reference`` (``c`` itself without a reference) to
  global L2 norm ``max_norm``: ``reference + d * min(1, max_norm / ||d||)``.

  Args:
    max_norm: the largest update norm kept, > 0.

  Returns:
    A ``ClientTransform`` (stateless).
  """
  if not max_norm > 0:
    raise ValueError(f"aggregation.clip_norm must be > 0, got {max_norm!r}")

  def apply(contribution, reference, state, key):
    del state, key
    update = (
      contribution if reference is None else jax.tree.map(jnp.subtract, contribution, reference)
    )
    norm = optax.tree.norm(update)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny))
    clipped = jax.tree.map(lambda leaf: (leaf * scale).astype(leaf.dtype), update)
    return clipped if reference is None else jax.tree.map(jnp.add, reference, clipped)

  return ClientTransform(no_state, apply)


def clip_layer_norms(max_norm: float) -> ClientTransform:
  """Per-layer clipping (McMahan et al. 2018): each top-level subtree ``l`` of the update (one
  of ``L`` layer groups) is clipped to ``max_norm / sqrt(L)``, so the whole update's norm stays
  at most ``max_norm`` (the same sensitivity as ``clip_update_norm``) while a layer with large
  updates no longer shrinks the others.

  Args:
    max_norm: the bound on the whole update's norm, > 0.

  Returns:
    A ``ClientTransform`` (stateless); contributions must be dicts of layer groups.
  """
  whole = clip_update_norm(max_norm)

  def apply(contribution, reference, state, key):
    groups = list(contribution)
    layer_clip = clip_update_norm(max_norm / len(groups) ** 0.5)
    return {
      name: layer_clip.apply(
        contribution[name], None if reference is None else reference[name], state, key
      )
      for name in groups
    }

  return ClientTransform(whole.init, apply)


def local_gaussian_noise(stddev: float) -> ClientTransform:
  """Local DP: each client adds ``N(0, stddev^2)`` to every coordinate of its (clipped) update
  before it leaves the client (``stddev = z C`` for local noise multiplier ``z``).

  Args:
    stddev: the noise's standard deviation, > 0.

  Returns:
    A ``ClientTransform`` (stateless).
  """

  def apply(contribution, reference, state, key):
    del reference, state
    return add_gaussian_noise(contribution, stddev, key)

  return ClientTransform(no_state, apply)


def gaussian_noise(stddev: float) -> ServerTransform:
  """Add ``N(0, stddev^2)`` to every coordinate of the reduced value (central DP: with
  contributions clipped to norm ``C`` around the reference and ``K`` uniform weights, the
  mean's sensitivity is ``C / K`` and ``stddev = z C / K`` for noise multiplier ``z``).

  Args:
    stddev: the noise's standard deviation, >= 0.

  Returns:
    A ``ServerTransform`` (stateless).
  """

  def apply(value, reference, state, key):
    del reference
    return add_gaussian_noise(value, stddev, key), state

  return ServerTransform(no_state, apply)


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
  """The noise multiplier left for the update when the clipped-count query of adaptive
  clipping spends part of ``noise_multiplier`` (Andrew et al. 2021, Theorem 1):
  ``z_update = (z^-2 - (2 sigma_b)^-2)^(-1/2)``; needs ``2 sigma_b > z``."""
  if not 2 * count_stddev > noise_multiplier:
    raise ValueError(
      f"aggregation.clip_count_stddev must be > privacy.noise_multiplier / 2 = "
      f"{noise_multiplier / 2:g}, got {count_stddev!r}"
    )
  return (noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5


def adaptive_clip_mean(
  initial_norm: float,
  target_quantile: float,
  learning_rate: float,
  noise_multiplier: float = 0.0,
  count_stddev: float = 0.0,
) -> Aggregator:
  """DP-FedAvg with adaptive clipping (Andrew et al., "Differentially private learning with
  adaptive clipping", NeurIPS 2021): the clip norm ``C`` is state and tracks the
  ``target_quantile`` of the clients' update norms.

  Each round, with ``K`` clients (weight > 0), updates ``d_k = c_k - reference``:
  the value is ``reference + mean_k(d_k min(1, C / |d_k|)) + N(0, (z_u C / K)^2)``; the
  clipped fraction is ``b = (sum_k 1[|d_k| <= C] + N(0, sigma_b^2)) / K``; then
  ``C <- C exp(-learning_rate (b - target_quantile))`` (geometric update). With noise,
  ``z_u = update_noise_multiplier(z, sigma_b)`` so that both queries together spend what one
  Gaussian query of multiplier ``z`` does (the accountant is given ``z``).

  Args:
    initial_norm: ``C`` before the first round, > 0.
    target_quantile: ``gamma`` in (0, 1), the share of updates left unclipped.
    learning_rate: ``eta_C`` of the geometric update (0.2 in the paper).
    noise_multiplier: ``z`` of the whole round (0: no noise, the count is exact).
    count_stddev: ``sigma_b``, the std of the noise on the count (the paper: ``K / 20``).

  Returns:
    An ``Aggregator`` without a sum form, state the current clip norm.
  """
  update_z = update_noise_multiplier(noise_multiplier, count_stddev) if noise_multiplier else 0.0

  def init(template):
    del template
    return jnp.asarray(initial_norm, jnp.float32)

  def aggregate(stacked, weights, reference, state, key):
    rows, unflatten = robust.flatten_cohort(stacked)
    start = jnp.zeros_like(rows[0]) if reference is None else ravel_pytree(reference)[0]
    updates = rows - start
    norms = jnp.linalg.norm(updates, axis=1)
    weights = jnp.asarray(weights, jnp.float32)
    present = weights > 0
    count = jnp.maximum(present.sum(), 1)
    scale = jnp.minimum(1.0, state / jnp.maximum(norms, jnp.finfo(jnp.float32).tiny))
    mean_update = weights @ (updates * scale[:, None]) / jnp.maximum(weights.sum(), 1e-12)
    update_key, count_key = jax.random.split(key)
    mean_update += update_z * state / count * jax.random.normal(update_key, mean_update.shape)
    unclipped = jnp.sum(present & (norms <= state)) + count_stddev * jax.random.normal(count_key)
    fraction = jnp.where(noise_multiplier > 0, unclipped, jnp.sum(present & (norms <= state)))
    new_norm = state * jnp.exp(-learning_rate * (fraction / count - target_quantile))
    return unflatten((start + mean_update).astype(rows.dtype)), new_norm

  return Aggregator(init, aggregate)
