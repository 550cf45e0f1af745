"""Reducers: the weighted mean (with a sum form), the fixed-denominator mean of Poisson cohorts,
the robust rules over ``ops/robust.py`` (median, trimmed mean, Krum, geometric median, centered
clipping) and simulated secure aggregation over ``ops/secure_aggregation.py``; and the options
of the registered rules (``aggregation.<rule>`` tables of a config)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedjax_lab.checks import require
from fedjax_lab.ops import robust, secure_aggregation
from fedjax_lab.ops.aggregate import weighted_mean
from fedjax_lab.ops.aggregators.contract import Aggregator, no_state


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

  return Aggregator(no_state, aggregate, prepare, finalize)


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

  return Aggregator(no_state, aggregate, prepare, finalize)


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

  return Aggregator(no_state, aggregate)


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

  return Aggregator(no_state, aggregate)


def _whole_model_rule(reduce_rows: Callable) -> Aggregator:
  """An aggregator from ``reduce_rows(rows [K, D], weights [K], reference_row or None) ->
  row``: each client's contribution is one vector."""

  def aggregate(stacked, weights, reference, state, key):
    del key
    rows, unflatten = robust.flatten_cohort(stacked)
    reference_row = None if reference is None else ravel_pytree(reference)[0]
    return unflatten(reduce_rows(rows, jnp.asarray(weights, jnp.float32), reference_row)), state

  return Aggregator(no_state, aggregate)


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

  return Aggregator(no_state, aggregate, upload_overhead=secure_aggregation.overhead_bytes)


# The registered rules' options: each a config table ``aggregation.<rule>``. ``check_cohort``,
# where defined, refuses a cohort the rule cannot reduce (called with the contributions a
# round aggregates, before anything compiles).


@dataclasses.dataclass(frozen=True)
class TrimmedMeanOptions:
  """``aggregation.trimmed_mean``: the ``fraction`` of contributions cut at each end."""

  fraction: float = 0.1

  def __post_init__(self):
    require(
      0 <= self.fraction < 0.5, "aggregation.trimmed_mean.fraction", "in [0, 0.5)", self.fraction
    )


@dataclasses.dataclass(frozen=True)
class KrumOptions:
  """``aggregation.krum``: ``byzantine``, the ``f`` attackers tolerated."""

  byzantine: int = 0

  def __post_init__(self):
    require(self.byzantine >= 0, f"{self._table}.byzantine", ">= 0", self.byzantine)

  _table = "aggregation.krum"

  def check_cohort(self, cohort: int) -> None:
    require(
      cohort >= 2 * self.byzantine + 3,
      "cohort_size",
      f">= 2 * {self._table}.byzantine + 3 = {2 * self.byzantine + 3} (Krum's guarantee "
      "needs n > 2f + 2)",
      cohort,
    )


@dataclasses.dataclass(frozen=True)
class MultiKrumOptions(KrumOptions):
  """``aggregation.multi_krum``: ``byzantine`` as Krum's, and the ``selected`` models averaged."""

  selected: int = 1
  _table = "aggregation.multi_krum"

  def __post_init__(self):
    super().__post_init__()
    require(self.selected >= 1, f"{self._table}.selected", ">= 1", self.selected)

  def check_cohort(self, cohort: int) -> None:
    super().check_cohort(cohort)
    require(
      self.selected <= cohort, f"{self._table}.selected", f"<= cohort_size={cohort}", self.selected
    )


@dataclasses.dataclass(frozen=True)
class GeometricMedianOptions:
  """``aggregation.geometric_median``: Weiszfeld ``iterations``."""

  iterations: int = 10

  def __post_init__(self):
    require(
      self.iterations >= 1, "aggregation.geometric_median.iterations", ">= 1", self.iterations
    )


@dataclasses.dataclass(frozen=True)
class CenteredClipOptions:
  """``aggregation.centered_clip``: the clipping ``radius`` and the ``iterations``."""

  radius: float = 1.0
  iterations: int = 10

  def __post_init__(self):
    require(self.radius > 0, "aggregation.centered_clip.radius", "> 0", self.radius)
    require(self.iterations >= 1, "aggregation.centered_clip.iterations", ">= 1", self.iterations)


@dataclasses.dataclass(frozen=True)
class SecureMeanOptions:
  """``aggregation.secure_mean``: the fixed-point ``scale_bits`` and the fraction of each
  cohort that ``dropout``s after masking."""

  scale_bits: int = 16
  dropout: float = 0.0

  def __post_init__(self):
    require(
      1 <= self.scale_bits <= 24, "aggregation.secure_mean.scale_bits", "in [1, 24]",
      self.scale_bits,
    )  # fmt: skip
    require(0 <= self.dropout < 1, "aggregation.secure_mean.dropout", "in [0, 1)", self.dropout)
