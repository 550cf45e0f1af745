"""SCAFFOLD (Karimireddy et al. 2020), option II control variates.

Client k corrects each local gradient by ``c - c_k``: here as the linear term
``<params, c - c_k>`` added to its loss, whose gradient is exactly that correction. After
``K_k`` local SGD steps of rate ``eta_l``: ``c_k+ = c_k - c + (x - y_k) / (K_k eta_l)``.
Server: ``x <- x + eta_g * (A(y; w) - x)`` with ``A`` the setup's aggregator (the weighted mean
by default), ``c <- c + |S| / N * mean(c_k+ - c_k)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  AGGREGATION_STREAM,
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  client_weights,
)
from fedjax_lab.ops.aggregate import (
  client_sum,
  tree_broadcast,
  tree_gather,
  tree_scatter,
  weighted_mean,
)
from fedjax_lab.ops.divergence import mean_pairwise_cosine


@struct.dataclass
class ScaffoldState:
  params: dict
  server_control: dict  # c, shaped like params
  client_controls: dict  # c_k, [num_clients, ...]
  aggregator_state: Any = ()


def control_correction(params, correction):
  """``<params, correction>``: its gradient in ``params`` is ``correction``."""
  products = jax.tree.map(lambda p, c: jnp.sum(p * jax.lax.stop_gradient(c)), params, correction)
  return sum(jax.tree.leaves(products))


def initial_state(setup: ClientSetup, key) -> ScaffoldState:
  """The model from ``key``, the server's and every client's control variate at zero."""
  params = setup.init_params(key)
  zeros = jax.tree.map(jnp.zeros_like, params)
  return ScaffoldState(
    params,
    zeros,
    tree_broadcast(zeros, setup.num_clients),
    setup.aggregator.init(setup.params_shape),
  )


def option_two_controls(old_controls, server_control, x, client_params, num_steps, lr):
  """Option II: ``c_k+ = c_k - c + (x - y_k) / (K_k eta_l)`` per cohort client (``K_k`` its
  steps, ``eta_l = lr``); a client that took no step keeps its ``c_k``."""
  steps = num_steps.astype(jnp.float32)
  scale = jnp.where(steps > 0, 1.0 / (jnp.maximum(steps, 1.0) * lr), 0.0)

  def new_control(ck, c, x, y):
    expand = scale.reshape((-1,) + (1,) * (y.ndim - 1))
    updated = ck - c[None] + (x[None] - y) * expand
    return jnp.where(expand > 0, updated, ck)

  return jax.tree.map(new_control, old_controls, server_control, x, client_params)


def server_step(setup: ClientSetup, client_learning_rate, server_learning_rate, carry) -> dict:
  """The new control variates, the aggregate and the server's step."""
  state, cohort, key = carry["state"], carry["cohort"], carry["key"]
  old_controls, client_params, result = (
    carry["old_controls"],
    carry["client_params"],
    carry["result"],
  )
  new_controls = option_two_controls(
    old_controls, state.server_control, state.params, client_params, result.num_steps,
    client_learning_rate,
  )  # fmt: skip
  weights = client_weights(cohort, setup.weighting)
  aggregate, aggregator_state = setup.aggregator.aggregate(
    client_params,
    weights,
    state.params,
    state.aggregator_state,
    jax.random.fold_in(key, AGGREGATION_STREAM),
  )
  params = jax.tree.map(
    lambda x, mean: x + server_learning_rate * (mean - x), state.params, aggregate
  )
  participation = cohort.client_ids.shape[0] / setup.num_clients
  control_delta = jax.tree.map(
    lambda total: total / cohort.client_ids.shape[0],
    client_sum(jax.tree.map(jnp.subtract, new_controls, old_controls)),
  )
  server_control = jax.tree.map(
    lambda c, d: c + participation * d, state.server_control, control_delta
  )
  state = ScaffoldState(
    params,
    server_control,
    tree_scatter(state.client_controls, cohort.client_ids, new_controls),
    aggregator_state,
  )
  metrics = {
    "train_loss": weighted_mean(result.mean_loss, weights),
    "client_cosine_similarity": mean_pairwise_cosine(client_params),
  }
  return {"state": state, "metrics": metrics}


def scaffold(
  setup: ClientSetup,
  *,
  client_learning_rate: float,
  server_learning_rate: float = 1.0,
) -> Algorithm:
  """SCAFFOLD with option II control variates (module docstring).

  Args:
    setup: client training (plain SGD for the control update to hold), executor, aggregator.
    client_learning_rate: ``eta_l``, the local SGD rate.
    server_learning_rate: ``eta_g``.

  Returns:
    An ``Algorithm`` whose state holds ``x``, ``c``, every client's ``c_k`` and the aggregator's
    state. A client receives and sends a model and a control variate.
  """
  train_cohort = setup.cohort_trainer(control_correction, params_axis=None, context_axis=0)

  def corrections(carry):
    """Each cohort client's correction ``c - c_k``."""
    state = carry["state"]
    old_controls = tree_gather(state.client_controls, carry["cohort"].client_ids)
    correction = jax.tree.map(lambda c, ck: c[None] - ck, state.server_control, old_controls)
    return {**carry, "old_controls": old_controls, "corrections": correction}

  def train(carry):
    client_params, result = train_cohort(
      carry["state"].params, carry["cohort"], carry["key"], carry["corrections"]
    )
    return {**carry, "client_params": client_params, "result": result}

  round_fn = phases.Phases(
    phases.server(corrections),
    phases.clients(train),
    phases.server(
      functools.partial(server_step, setup, client_learning_rate, server_learning_rate)
    ),
  )
  init = functools.partial(initial_state, setup)

  payload = (setup.params_shape, setup.params_shape)
  return Algorithm(
    init, round_fn, global_params=lambda state: state.params, download=payload, upload=payload
  )


ENTRY = AlgorithmEntry(
  lambda setup, options, config: scaffold(
    setup,
    client_learning_rate=config.local.learning_rate,
    server_learning_rate=config.server.learning_rate,
  ),
  keeps_lost_clients=True,  # an empty client keeps its control (new_control) and weighs 0
)
