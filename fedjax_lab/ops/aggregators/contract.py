"""The aggregation contract: ``Aggregator(init, aggregate, prepare, finalize)``, the client and
server transforms, and ``chain``, which composes them like optax transformations (the package
docstring states the contract)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax

Pytree = Any


class Aggregator(NamedTuple):
  """Reduces ``[cohort, ...]`` contributions to one pytree (module docstring)."""

  init: Callable[[Pytree], Any]
  aggregate: Callable[[Pytree, jax.Array, Optional[Pytree], Any, jax.Array], tuple[Pytree, Any]]
  prepare: Optional[Callable[[Pytree, Optional[Pytree], Any, jax.Array], Pytree]] = None
  finalize: Optional[Callable[..., tuple[Pytree, Any]]] = None
  # extra bytes one client uploads per round for the aggregation protocol, given the cohort
  upload_overhead: Optional[Callable[[int], int]] = None
  # error feedback (``compression.error_feedback``): the compressor each client applies to its
  # contribution plus its residual, before the aggregation proper; the state is then
  # ``(aggregation state, residuals [num_clients, ...])`` (``compression.error_feedback``)
  feedback: Optional[ClientTransform] = None

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


def no_state(template) -> tuple:
  """The ``init`` of a part without state."""
  del template
  return ()


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
