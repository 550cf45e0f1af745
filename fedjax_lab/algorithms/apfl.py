"""APFL, adaptive personalized federated learning (Deng, Kamani and Mahdavi 2020).

Client ``k`` keeps a personal model ``v_k`` and a mixing weight ``alpha_k``; its model is
``alpha_k v_k + (1 - alpha_k) w`` (``ops.personalization.mix``). At each local step on a
batch, ``w`` takes a step on ``f_k(w)`` and ``(v_k, alpha_k)`` one on
``f_k(alpha v + (1 - alpha) w)``, ``w`` held fixed there: one objective,
``f_k(w) + f_k(mix(alpha, v, stop_gradient(w)))``, whose gradients are exactly those, trained
with the setup's optimizer, ``alpha``'s step scaled to ``alpha_learning_rate``. ``alpha`` is
clipped to [0, 1] where it mixes and when stored (the paper's projection). The trained
``w_k`` go through the setup's aggregator; ``v_k`` and ``alpha_k`` stay on the client.
``adaptive_alpha=false`` keeps every ``alpha_k`` at its start. A step size of alpha near the
local one drives it to 0 within a few rounds (``v`` trails ``w`` early on), where ``v`` stops
learning: hence its own, smaller step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  aggregate_models,
  client_weights,
  model_and_copies,
  personal_views,
  training_metrics,
)
from fedjax_lab.checks import require
from fedjax_lab.engine.local import cross_entropy_objective
from fedjax_lab.ops.aggregate import tree_broadcast, tree_gather, tree_scatter
from fedjax_lab.ops.personalization import mix


@dataclasses.dataclass(frozen=True)
class APFLConfig:
  """``algorithm.apfl``: every client's initial mixing weight, and whether it is learned."""

  alpha: float = 0.25
  adaptive_alpha: bool = True
  alpha_learning_rate: float = 0.001  # SGD step size of alpha, per local step

  def __post_init__(self):
    require(0 <= self.alpha <= 1, "algorithm.apfl.alpha", "in [0, 1]", self.alpha)
    require(
      self.alpha_learning_rate > 0,
      "algorithm.apfl.alpha_learning_rate",
      "> 0",
      self.alpha_learning_rate,
    )


@struct.dataclass
class APFLState:
  params: dict  # w
  personal: dict  # v_k, [num_clients, ...]
  alpha: jax.Array  # alpha_k, [num_clients]
  aggregator_state: Any = ()


def apfl(setup: ClientSetup, options: APFLConfig, learning_rate: float) -> Algorithm:
  """APFL (module docstring).

  Args:
    setup: client training, executor and aggregator (global updates only).
    options: the initial ``alpha``, ``adaptive_alpha`` and ``alpha_learning_rate``.
    learning_rate: the local optimizer's step size; ``alpha``'s gradient is scaled by
      ``alpha_learning_rate / learning_rate`` so that its SGD step is ``alpha_learning_rate``.

  Returns:
    An ``Algorithm`` with the global model and each client's mixed model; a client receives
    and sends one model.
  """
  loss = cross_entropy_objective(setup.train_apply)
  rate_ratio = options.alpha_learning_rate / learning_rate

  def objective(triple, x, y, mask, context):
    w, v, alpha = triple
    held = jax.lax.stop_gradient(alpha)
    alpha = held + rate_ratio * (alpha - held) if options.adaptive_alpha else held
    alpha = jnp.clip(alpha, 0, 1)
    mixed = mix(alpha, v, jax.lax.stop_gradient(w))
    return loss(w, x, y, mask, None) + loss(mixed, x, y, mask, None)

  train = setup.executor.map(
    setup.local_trainer(data_loss=objective), (0, 0, 0, 0, 0, None), sort_by=3
  )

  def init(key):
    params, copies, aggregator_state = model_and_copies(setup, key)
    alpha = jnp.full((setup.num_clients,), options.alpha, jnp.float32)
    return APFLState(params, copies, alpha, aggregator_state)

  def train_both(carry):
    """Each client's global copy, personal model and ``alpha``, trained together."""
    state, cohort = carry["state"], carry["cohort"]
    size = cohort.client_ids.shape[0]
    start = (
      tree_broadcast(state.params, size),
      tree_gather(state.personal, cohort.client_ids),
      state.alpha[cohort.client_ids],
    )
    keys = jax.random.split(carry["key"], size)
    trained, result = train(start, cohort.x, cohort.y, cohort.num_examples, keys, None)
    return {**carry, "trained": trained, "result": result}

  def aggregate(carry):
    state, cohort, key, result = carry["state"], carry["cohort"], carry["key"], carry["result"]
    trained, personal, alpha = carry["trained"]
    weights = client_weights(cohort, setup.weighting)
    params, aggregator_state = aggregate_models(
      setup, trained, weights, state.params, state.aggregator_state, key
    )
    state = APFLState(
      params,
      tree_scatter(state.personal, cohort.client_ids, personal),
      state.alpha.at[cohort.client_ids].set(jnp.clip(alpha, 0, 1)),
      aggregator_state,
    )
    metrics = training_metrics(result, trained, weights)
    metrics["alpha_mean"] = jnp.mean(state.alpha)
    return {"state": state, "metrics": metrics}

  round_fn = phases.Phases(phases.clients(train_both), phases.server(aggregate))

  def personal_params_of(state, client_ids):
    alpha = state.alpha[client_ids]
    weight = lambda leaf: alpha.reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jax.tree.map(
      lambda v, w: weight(v) * v + (1 - weight(v)) * w[None],
      tree_gather(state.personal, client_ids),
      state.params,
    )

  return Algorithm(
    init,
    round_fn,
    global_params=lambda state: state.params,
    **personal_views(personal_params_of, setup.num_clients),
  )


# Only the global update is sent, through the aggregator; an empty client takes no step.
ENTRY = AlgorithmEntry(
  lambda setup, options, config: apfl(setup, options, config.local.learning_rate),
  options=APFLConfig,
  aggregated_uploads=True,
  keeps_lost_clients=True,
)
