"""The aggregation contract: ``Aggregator(init, aggregate, prepare, finalize)``, pure functions,
composed like optax transformations.

A cohort's contributions are a pytree whose leaves are ``[cohort, ...]`` (client models, control
variates...), with weights ``w [cohort]`` and a ``reference`` (the model the clients started
from, or None). ``aggregate(stacked, weights, reference, state, key) -> (value, state)`` reduces
them to one pytree; ``init(template) -> state`` starts the aggregator's state (``()`` if it has
none) from one contribution's shape.

An aggregator that is a weighted sum in disguise also declares its *sum form*:
``aggregate(c, w, r, s, k) == finalize(sum_k w_k prepare(c_k, r, s, k_k), sum_k w_k, r, s, k)``
(up to rounding). Algorithms then reduce the cohort with ``Executor.map_sum`` (accumulated per
micro-cohort, memory flat in the cohort) instead of stacking it; an aggregator without one (a
median) gets the stack.

``chain(*client_transforms, reducer, *server_transforms)`` builds one aggregator: each
``ClientTransform`` maps every contribution before the reduction (clipping, local noise), the
reducer is an ``Aggregator``, each ``ServerTransform`` maps its output (central noise). The
chain keeps the reducer's sum form. Registered rules: ``AGGREGATORS`` (mean, median, and the
robust rules of ``ops/robust.py``: trimmed mean, Krum, Multi-Krum, geometric median, centered
clipping).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from fedjax_lab.ops import attacks, robust, secure_aggregation
from fedjax_lab.ops.aggregate import weighted_mean
from fedjax_lab.registry import Registry

Pytree = Any


class Aggregator(NamedTuple):
  """Reduces ``[cohort, ...]`` contributions to one pytree (module docstring)."""

  init: Callable[[Pytree], Any]
  aggregate: Callable[[Pytree, jax.Array, Optional[Pytree], Any, jax.Array], tuple[Pytree, Any]]
  prepare: Optional[Callable[[Pytree, Optional[Pytree], Any, jax.Array], Pytree]] = None
  finalize: Optional[Callable[..., tuple[Pytree, Any]]] = None
  # extra bytes one client uploads per round for the aggregation protocol, given the cohort
  upload_overhead: Optional[Callable[[int], int]] = None

  @property
  def has_sum_form(self) -> bool:
    return self.prepare is not None and self.finalize is not None


class ClientTransform(NamedTuple):
  """``apply(contribution, reference, state, key) -> contribution`` for one client."""

  init: Callable[[Pytree], Any]
  apply: Callable[[Pytree, Optional[Pytree], Any, jax.Array], Pytree]


class ServerTransform(NamedTuple):
  """``apply(value, reference, state, key) -> (value, state)`` on the reduced value."""

  init: Callable[[Pytree], Any]
  apply: Callable[[Pytree, Optional[Pytree], Any, jax.Array], tuple[Pytree, Any]]


def _no_state(template) -> tuple:
  del template
  return ()


def mean() -> Aggregator:
  """The weighted mean ``sum_k w_k c_k / sum_k w_k`` (all-zero weights give zeros).

  Returns:
    An ``Aggregator`` with a sum form: ``prepare`` is the identity, ``finalize`` divides the
    weighted sum by ``max(sum_k w_k, tiny)``.
  """

  def aggregate(stacked, weights, reference, state, key):
    del reference, key
    return weighted_mean(stacked, weights), state

  def prepare(contribution, reference, state, key):
    del reference, state, key
    return contribution

  def finalize(weighted_sum, total_weight, reference, state, key):
    del reference, key
    total = jnp.maximum(total_weight, jnp.finfo(jnp.float32).tiny)
    return jax.tree.map(lambda leaf: leaf / total, weighted_sum), state

  return Aggregator(_no_state, aggregate, prepare, finalize)


def fixed_denominator_mean(denominator: float) -> Aggregator:
  """The mean of updates over a fixed denominator ``D``, for Poisson-sampled cohorts
  (McMahan et al. 2018's fixed-denominator estimator):
  ``reference + sum_k w_k (c_k - reference) / D``, whatever the number of clients drawn; an
  empty cohort (all weights 0) gives the reference. With ``D`` the expected total weight it is
  unbiased for the mean update over every client, and one client moves it by at most
  ``w_k ||c_k - reference|| / D``, a bound that does not depend on the draw (so the Gaussian
  noise of ``gaussian_noise(z C / D)`` makes it DP).

  Args:
    denominator: ``D > 0``, the expected total weight (with uniform weights: the expected
      cohort size).

  Returns:
    An ``Aggregator`` with a sum form (``prepare`` is ``c - reference``); it needs a
    reference.
  """
  if not denominator > 0:
    raise ValueError(f"the fixed denominator must be > 0, got {denominator!r}")

  def aggregate(stacked, weights, reference, state, key):
    del key
    weights = jnp.asarray(weights, jnp.float32)
    return jax.tree.map(
      lambda c, r: (r + jnp.tensordot(weights, c - r, axes=1) / denominator).astype(r.dtype),
      stacked,
      reference,
    ), state

  def prepare(contribution, reference, state, key):
    del state, key
    return jax.tree.map(jnp.subtract, contribution, reference)

  def finalize(weighted_sum, total_weight, reference, state, key):
    del total_weight, key
    return jax.tree.map(
      lambda s, r: (r + s / denominator).astype(r.dtype), weighted_sum, reference
    ), state

  return Aggregator(_no_state, aggregate, prepare, finalize)


def median() -> Aggregator:
  """Coordinate-wise weighted median (``ops.robust.weighted_median`` per leaf): robust to a
  minority of arbitrary contributions. No sum form: it needs the cohort's stack.

  Returns:
    An ``Aggregator`` without a sum form.
  """

  def aggregate(stacked, weights, reference, state, key):
    del reference, key
    weights = jnp.asarray(weights, jnp.float32)
    return jax.tree.map(
      lambda leaf: robust.weighted_median(leaf, weights).astype(leaf.dtype), stacked
    ), state

  return Aggregator(_no_state, aggregate)


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

  return ClientTransform(_no_state, apply)


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
    leaves, treedef = jax.tree.flatten(contribution)
    keys = jax.random.split(key, len(leaves))
    noisy = [
      (leaf + stddev * jax.random.normal(k, leaf.shape)).astype(leaf.dtype)
      for k, leaf in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noisy)

  return ClientTransform(_no_state, apply)


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


def chain(*parts) -> Aggregator:
  """One aggregator from ``ClientTransform``s, then exactly one ``Aggregator`` (the reducer),
  then ``ServerTransform``s, applied in that order. The state is the tuple of the parts'
  states; each part gets its own key (``fold_in(key, index)``).

  Args:
    *parts: client transforms, one reducer, server transforms, in order.

  Returns:
    An ``Aggregator``; it has a sum form when the reducer has one.
  """
  reducers = [i for i, part in enumerate(parts) if isinstance(part, Aggregator)]
  if len(reducers) != 1:
    raise ValueError(f"chain needs exactly one Aggregator among its parts, got {len(reducers)}")
  at = reducers[0]
  before, reducer, after = parts[:at], parts[at], parts[at + 1 :]
  if not all(isinstance(p, ClientTransform) for p in before) or not all(
    isinstance(p, ServerTransform) for p in after
  ):
    raise ValueError("chain: client transforms come before the reducer, server transforms after")

  def init(template):
    return tuple(part.init(template) for part in parts)

  def prepare_one(contribution, reference, state, key):
    for index, part in enumerate(before):
      contribution = part.apply(
        contribution, reference, state[index], jax.random.fold_in(key, index)
      )
    return contribution

  def transform_out(value, reference, states, key):
    states = list(states)
    for offset, part in enumerate(after):
      index = at + 1 + offset
      value, states[index] = part.apply(
        value, reference, states[index], jax.random.fold_in(key, index)
      )
    return value, tuple(states)

  def aggregate(stacked, weights, reference, state, key):
    keys = jax.random.split(key, jax.tree.leaves(stacked)[0].shape[0])
    prepared = jax.vmap(prepare_one, in_axes=(0, None, None, 0))(stacked, reference, state, keys)
    value, reducer_state = reducer.aggregate(
      prepared, weights, reference, state[at], jax.random.fold_in(key, at)
    )
    return transform_out(value, reference, state[:at] + (reducer_state,) + state[at + 1 :], key)

  if not reducer.has_sum_form:
    return Aggregator(init, aggregate, upload_overhead=reducer.upload_overhead)

  def prepare(contribution, reference, state, key):
    return reducer.prepare(
      prepare_one(contribution, reference, state, key),
      reference,
      state[at],
      jax.random.fold_in(key, at),
    )

  def finalize(weighted_sum, total_weight, reference, state, key):
    value, reducer_state = reducer.finalize(
      weighted_sum, total_weight, reference, state[at], jax.random.fold_in(key, at)
    )
    return transform_out(value, reference, state[:at] + (reducer_state,) + state[at + 1 :], key)

  return Aggregator(init, aggregate, prepare, finalize, reducer.upload_overhead)


def trimmed_mean(trim_fraction: float) -> Aggregator:
  """Coordinate-wise trimmed mean (``ops.robust.trimmed_mean``), dropping
  ``floor(trim_fraction * K)`` values at each end of every coordinate.

  Args:
    trim_fraction: in [0, 0.5).

  Returns:
    An ``Aggregator`` without a sum form.
  """

  def aggregate(stacked, weights, reference, state, key):
    del reference, key
    weights = jnp.asarray(weights, jnp.float32)
    trim = int(trim_fraction * weights.shape[0])
    return jax.tree.map(
      lambda leaf: robust.trimmed_mean(leaf, weights, trim).astype(leaf.dtype), stacked
    ), state

  return Aggregator(_no_state, aggregate)


def _whole_model_rule(reduce_rows: Callable) -> Aggregator:
  """An aggregator from ``reduce_rows(rows [K, D], weights [K], reference_row or None) ->
  row``: each client's contribution is one vector."""

  def aggregate(stacked, weights, reference, state, key):
    del key
    rows, unflatten = robust.flatten_cohort(stacked)
    reference_row = None if reference is None else ravel_pytree(reference)[0]
    return unflatten(reduce_rows(rows, jnp.asarray(weights, jnp.float32), reference_row)), state

  return Aggregator(_no_state, aggregate)


def multi_krum(byzantine: int, selected: int) -> Aggregator:
  """Multi-Krum (``ops.robust.multi_krum``; ``selected=1``: Krum) over whole models.

  Args:
    byzantine: the number ``f`` of malicious clients tolerated.
    selected: how many lowest-scoring contributions are averaged.

  Returns:
    An ``Aggregator`` without a sum form.
  """
  return _whole_model_rule(
    lambda rows, weights, reference: robust.multi_krum(rows, weights, byzantine, selected)
  )


def geometric_median(iterations: int) -> Aggregator:
  """The weighted geometric median of whole models (``ops.robust.geometric_median``).

  Args:
    iterations: Weiszfeld iterations.

  Returns:
    An ``Aggregator`` without a sum form.
  """
  return _whole_model_rule(
    lambda rows, weights, reference: robust.geometric_median(rows, weights, iterations)
  )


def centered_clip(radius: float, iterations: int) -> Aggregator:
  """Centered clipping around the clients' start model (``ops.robust.centered_clip``; around
  the weighted mean when there is no reference).

  Args:
    radius: the clipping radius around the running center.
    iterations: clipping iterations.

  Returns:
    An ``Aggregator`` without a sum form.
  """

  def reduce_rows(rows, weights, reference):
    center = weights @ rows / jnp.maximum(weights.sum(), 1e-12) if reference is None else reference
    return robust.centered_clip(rows, weights, center, radius, iterations)

  return _whole_model_rule(reduce_rows)


def secure_mean(scale_bits: int, dropout: float) -> Aggregator:
  """The weighted mean through simulated secure aggregation (``ops/secure_aggregation.py``):
  each client sends its weighted update ``w_k / sum(w) * (c_k - reference)`` in fixed point
  (``scale_bits`` fractional bits) plus pairwise masks; ``floor(dropout * K)`` clients chosen
  at random drop after masking and the server recovers the survivors' sum, then divides by
  their share of the weight. Equals the mean of the survivors up to the fixed-point rounding
  (at most ``K 2^-(scale_bits+1)`` per coordinate); values must stay within
  ``+-2^(31-scale_bits)``.

  Args:
    scale_bits: fractional bits of the fixed-point encoding.
    dropout: the fraction of each cohort that drops after masking, in [0, 1).

  Returns:
    An ``Aggregator`` without a sum form (the masks need the whole cohort), whose
    ``upload_overhead`` counts the protocol's keys and seed shares.
  """

  def aggregate(stacked, weights, reference, state, key):
    rows, unflatten = robust.flatten_cohort(stacked)
    start = jnp.zeros_like(rows[0]) if reference is None else ravel_pytree(reference)[0]
    share = jnp.asarray(weights, jnp.float32)
    share = share / jnp.maximum(share.sum(), jnp.finfo(jnp.float32).tiny)
    mask_key, drop_key = jax.random.split(key)
    count = rows.shape[0]
    dropped = jax.random.permutation(drop_key, count) < int(dropout * count)
    received = secure_aggregation.masked_inputs(
      share[:, None] * (rows - start), mask_key, scale_bits
    )
    total = secure_aggregation.decode(
      secure_aggregation.unmask_sum(received, ~dropped, mask_key), scale_bits
    )
    surviving = jnp.sum(jnp.where(dropped, 0.0, share))
    mean_update = total / jnp.maximum(surviving, jnp.finfo(jnp.float32).tiny)
    return unflatten((start + mean_update).astype(rows.dtype)), state

  return Aggregator(_no_state, aggregate, upload_overhead=secure_aggregation.overhead_bytes)


def under_attack(reducer: Aggregator, kind: str, fraction: float, strength: float) -> Aggregator:
  """``reducer`` fed a poisoned cohort: each round ``floor(fraction * K)`` contributions,
  chosen at random, are replaced by attack ``kind`` acting on their updates (contribution minus
  ``reference``; ``ops/attacks.py``). For ``alie`` a ``strength`` of 0 means Baruch et al.'s
  ``z_max`` for the cohort.

  Args:
    reducer: the aggregation rule under test.
    kind: one of ``ops.attacks.ATTACKS``.
    fraction: the attacker's share of each cohort, in [0, 1).
    strength: the attack's scale (sign_flip, scale), noise std (gaussian) or z (alie).

  Returns:
    An ``Aggregator`` without a sum form (the attack sees the cohort).
  """

  def aggregate(stacked, weights, reference, state, key):
    rows, unflatten = robust.flatten_cohort(stacked)
    start = jnp.zeros_like(rows[0]) if reference is None else ravel_pytree(reference)[0]
    count = rows.shape[0]
    choose_key, attack_key, reduce_key = jax.random.split(key, 3)
    malicious = attacks.malicious_rows(choose_key, count, fraction)
    scale = strength
    if kind == "alie" and strength == 0:
      scale = attacks.alie_z(count, int(fraction * count))
    poisoned = start + attacks.poison(kind, rows - start, malicious, scale, attack_key)
    return reducer.aggregate(jax.vmap(unflatten)(poisoned), weights, reference, state, reduce_key)

  return Aggregator(reducer.init, aggregate, upload_overhead=reducer.upload_overhead)


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
    leaves, treedef = jax.tree.flatten(value)
    keys = jax.random.split(key, len(leaves))
    noisy = [
      (leaf + stddev * jax.random.normal(k, leaf.shape)).astype(leaf.dtype)
      for k, leaf in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noisy), state

  return ServerTransform(_no_state, apply)


# name -> rule(aggregation) -> Aggregator; ``aggregation`` is the run's
# ``config.AggregationConfig``, read for its fields only.
AGGREGATORS: Registry[Callable[[Any], Aggregator]] = Registry("aggregation.rule")
AGGREGATORS.register("mean", lambda options: mean())
AGGREGATORS.register("median", lambda options: median())
AGGREGATORS.register("trimmed_mean", lambda options: trimmed_mean(options.trim_fraction))
AGGREGATORS.register("krum", lambda options: multi_krum(options.byzantine, 1))
AGGREGATORS.register(
  "multi_krum", lambda options: multi_krum(options.byzantine, options.krum_selected)
)
AGGREGATORS.register("geometric_median", lambda options: geometric_median(options.iterations))
AGGREGATORS.register(
  "centered_clip", lambda options: centered_clip(options.clip_radius, options.iterations)
)
AGGREGATORS.register(
  "secure_mean", lambda options: secure_mean(options.secure_scale_bits, options.secure_dropout)
)
