"""FedOpt (Reddi et al. 2021), with FedAvg, FedAvgM and FedProx as settings of it.

Round: every cohort member trains the global model ``x`` locally to ``y_k``; the server takes
the pseudo-gradient ``g = x - A(y_1..y_M; w)`` where ``A`` is the setup's aggregator (the
weighted mean ``sum_k w_k y_k / sum_k w_k`` by default) and applies any optax transformation:
``x <- x + server_optimizer.update(g)``. FedAvg (McMahan et al. 2017) is ``optax.sgd(1.0)``,
FedAvgM is SGD with momentum, FedAdam / FedYogi are ``optax.adam`` / ``optax.yogi``.
FedProx (Li et al. 2020) adds ``mu / 2 * ||y - x||^2`` to each local loss.

The cohort is reduced with ``ClientSetup.cohort_reduce``: each client contributes ``y_k``
with weight ``w_k`` and the diagnostics ``(w_k loss_k, y_k / ||y_k||)``; with the mean (a sum
form) only sums are kept, so with micro-cohorts (``chunked``) or the per-client ``loop`` peak
memory does not grow with the cohort.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  client_weight,
)
from fedjax_lab.checks import require
from fedjax_lab.ops.divergence import mean_pairwise_cosine_from_sum, unit_vector
from fedjax_lab.ops.losses import proximal_penalty


@struct.dataclass
class FedOptState:
  params: dict
  server_opt_state: optax.OptState
  aggregator_state: Any = ()


def proximal_term(mu: float):
  """``mu / 2 * ||params - anchor||^2`` with ``context = anchor`` (FedProx)."""

  return lambda params, anchor: proximal_penalty(params, anchor, mu)


def fedopt(
  setup: ClientSetup,
  server_optimizer: optax.GradientTransformation,
  *,
  prox_mu: float = 0.0,
) -> Algorithm:
  """FedOpt: local training from the global model, aggregation, a server optimizer step.

  Args:
    setup: client training, executor and aggregator.
    server_optimizer: applied to the pseudo-gradient ``x - A(y)`` (``optax.sgd(1.0)``: FedAvg).
    prox_mu: FedProx's ``mu`` (0: no proximal term).

  Returns:
    An ``Algorithm`` whose state holds the global model, the server optimizer's state and the
    aggregator's state; metrics ``train_loss`` and ``client_cosine_similarity``.
  """
  train = setup.local_trainer(proximal_term(prox_mu) if prox_mu > 0 else None)

  def contribution(params, x, y, num_examples, key, context, step_limit):
    trained, result = train(params, x, y, num_examples, key, params, step_limit)
    weight = client_weight(num_examples, setup.weighting)
    present = (num_examples > 0).astype(jnp.float32)  # not an empty (padding) client
    unit = jax.tree.map(lambda leaf: present * leaf, unit_vector(trained))
    return trained, weight, (weight * result.mean_loss, unit, present)

  reduce_cohort = setup.cohort_reduce(contribution)

  def init(key):
    params = setup.init_params(key)
    return FedOptState(
      params, server_optimizer.init(params), setup.aggregator.init(setup.params_shape)
    )

  def train_and_reduce(carry):
    """The cohort trains from the global model; its models reach the server only through the
    aggregator (``cohort_reduce``)."""
    state = carry["state"]
    reduction = reduce_cohort(state.params, carry["cohort"], carry["key"], state.aggregator_state)
    return {**carry, "reduction": reduction}

  def server_step(carry):
    """``x <- x + server_optimizer.update(x - A(y))``."""
    state, reduction = carry["state"], carry["reduction"]
    weighted_loss, unit_sum, present = reduction.extras
    total_weight = jnp.maximum(reduction.total_weight, jnp.finfo(jnp.float32).tiny)
    pseudo_gradient = jax.tree.map(jnp.subtract, state.params, reduction.aggregate)
    updates, opt_state = server_optimizer.update(
      pseudo_gradient, state.server_opt_state, state.params
    )
    metrics = {
      "train_loss": weighted_loss / total_weight,
      "client_cosine_similarity": mean_pairwise_cosine_from_sum(unit_sum, present),
    }
    state = FedOptState(
      optax.apply_updates(state.params, updates), opt_state, reduction.aggregator_state
    )
    return {"state": state, "metrics": metrics}

  round_fn = phases.Phases(phases.clients(train_and_reduce), phases.server(server_step))

  return Algorithm(init, round_fn, global_params=lambda state: state.params)


def server_optimizer(server) -> optax.GradientTransformation:
  """The optax transformation named by ``server`` (a ``config.ServerConfig``): FedAvg is
  sgd(1.0); FedAvgM sgd with momentum; FedAdam / FedYogi / FedAdagrad (Reddi et al.)."""
  if server.optimizer == "sgd":
    return optax.sgd(server.learning_rate, momentum=server.momentum or None)
  if server.optimizer == "adam":
    return optax.adam(server.learning_rate, b1=server.b1, b2=server.b2, eps=server.eps)
  if server.optimizer == "yogi":
    return optax.yogi(server.learning_rate, b1=server.b1, b2=server.b2, eps=server.eps)
  return optax.adagrad(server.learning_rate, eps=server.eps)


@dataclasses.dataclass(frozen=True)
class FedProxConfig:
  """FedProx's proximal weight (``algorithm.fedprox.mu``)."""

  mu: float = 0.01

  def __post_init__(self):
    require(self.mu > 0, "algorithm.fedprox.mu", "> 0", self.mu)


@dataclasses.dataclass(frozen=True)
class FedOptConfig:
  """FedOpt with an optional proximal term (``algorithm.fedopt.prox_mu``, 0: none)."""

  prox_mu: float = 0.0

  def __post_init__(self):
    require(self.prox_mu >= 0, "algorithm.fedopt.prox_mu", ">= 0", self.prox_mu)


def _build(setup: ClientSetup, config, prox_mu: float = 0.0) -> Algorithm:
  return fedopt(setup, server_optimizer(config.server), prox_mu=prox_mu)


FEDAVG = AlgorithmEntry(
  lambda setup, options, config: _build(setup, config),
  any_cohort_size=True,
  aggregated_uploads=True,
  cohort_reduced=True,
)
FEDPROX = AlgorithmEntry(
  lambda setup, options, config: _build(setup, config, options.mu),
  FedProxConfig,
  any_cohort_size=True,
  aggregated_uploads=True,
  cohort_reduced=True,
)
FEDOPT = AlgorithmEntry(
  lambda setup, options, config: _build(setup, config, options.prox_mu),
  FedOptConfig,
  any_cohort_size=True,
  aggregated_uploads=True,
  cohort_reduced=True,
)
# Centralized training: FedAvg on one client holding all the training data.
CENTRALIZED = AlgorithmEntry(FEDAVG.build, pooled=True, aggregated_uploads=True)
