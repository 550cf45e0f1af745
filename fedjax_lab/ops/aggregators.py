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
chain keeps the reducer's sum form. Registered rules: ``AGGREGATORS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from fedjax_lab.ops.aggregate import weighted_mean
from fedjax_lab.registry import Registry

Pytree = Any


class Aggregator(NamedTuple):
  """Reduces ``[cohort, ...]`` contributions to one pytree (module docstring)."""

  init: Callable[[Pytree], Any]
  aggregate: Callable[[Pytree, jax.Array, Optional[Pytree], Any, jax.Array], tuple[Pytree, Any]]
  prepare: Optional[Callable[[Pytree, Optional[Pytree], Any, jax.Array], Pytree]] = None
  finalize: Optional[Callable[..., tuple[Pytree, Any]]] = None

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


def weighted_median(values: jax.Array, weights: jax.Array) -> jax.Array:
  """Coordinate-wise weighted median over the leading axis of ``values [cohort, ...]``: per
  coordinate, the smallest value whose cumulative weight (values sorted) reaches half the total.
  Zero-weight rows never count; with equal weights and an even count it is the lower median."""
  order = jnp.argsort(values, axis=0)
  sorted_values = jnp.take_along_axis(values, order, axis=0)
  expand = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
  sorted_weights = jnp.take_along_axis(jnp.broadcast_to(expand, values.shape), order, axis=0)
  cumulative = jnp.cumsum(sorted_weights, axis=0)
  first = jnp.argmax(cumulative >= 0.5 * cumulative[-1:], axis=0)
  return jnp.take_along_axis(sorted_values, first[None], axis=0)[0]


def median() -> Aggregator:
  """Coordinate-wise weighted median (``weighted_median`` per leaf): robust to a minority of
  arbitrary contributions. No sum form: it needs the cohort's stack.

  Returns:
    An ``Aggregator`` without a sum form.
  """

  def aggregate(stacked, weights, reference, state, key):
    del reference, key
    weights = jnp.asarray(weights, jnp.float32)
    return jax.tree.map(
      lambda leaf: weighted_median(leaf, weights).astype(leaf.dtype), stacked
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
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(update)))
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny))
    clipped = jax.tree.map(lambda leaf: (leaf * scale).astype(leaf.dtype), update)
    return clipped if reference is None else jax.tree.map(jnp.add, reference, clipped)

  return ClientTransform(_no_state, apply)


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
    return Aggregator(init, aggregate)

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

  return Aggregator(init, aggregate, prepare, finalize)


AGGREGATORS: Registry[Callable[[], Aggregator]] = Registry("aggregation.rule")
AGGREGATORS.register("mean", mean)
AGGREGATORS.register("median", median)
