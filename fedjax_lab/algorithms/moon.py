"""MOON: model-contrastive federated learning (Li, He and Song, CVPR 2021), a baseline of the
FedSND comparison.

FedAvg, with each client's local objective

    CE(f(x), y) + mu * l_con(z, z_glob, z_prev)

where ``z``, ``z_glob`` and ``z_prev`` are the representations the read-out layer receives
(``Model.apply_with_features``) under the model being trained, the model received this round
and the client's own model from the last round it took part in (before its first round, the
initial global model, which every client's previous model starts as), and
``l_con`` is ``ops.contrastive.model_contrastive_loss`` at temperature ``tau``. The paper adds a
projection head before the contrast; here the representation is the read-out layer's input,
so the model and its parameter count are the other methods' (a setting, written down).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  aggregate_models,
  client_weights,
  model_and_copies,
  training_metrics,
)
from fedjax_lab.checks import require
from fedjax_lab.engine.precision import apply_in
from fedjax_lab.ops.aggregate import tree_broadcast, tree_gather, tree_scatter
from fedjax_lab.ops.contrastive import model_contrastive_loss
from fedjax_lab.ops.losses import masked_mean, per_example_cross_entropy


@struct.dataclass
class MOONState:
  params: dict
  previous_params: Any  # [num_clients, ...] each client's last local model (initially theta_0)
  aggregator_state: Any = ()


@dataclasses.dataclass(frozen=True)
class MOONConfig:
  """MOON's options (``algorithm.moon``)."""

  mu: float = 1.0  # weight of the contrastive term (the paper: 5 on CIFAR-10, 1 on CIFAR-100)
  temperature: float = 0.5  # tau

  def __post_init__(self):
    require(self.mu >= 0, "algorithm.moon.mu", ">= 0", self.mu)
    require(self.temperature > 0, "algorithm.moon.temperature", "> 0", self.temperature)


def contrastive_objective(apply_with_features, mu: float, temperature: float):
  """``objective(params, x, y, mask, (global_params, previous_params))``: masked CE plus
  ``mu * l_con`` on the same batch."""

  def objective(params, x, y, mask, context):
    global_params, previous_params = context
    logits, z = apply_with_features(params, x)
    _, z_global = apply_with_features(global_params, x)
    _, z_previous = apply_with_features(previous_params, x)
    loss = masked_mean(per_example_cross_entropy(logits, y), mask)
    return loss + mu * model_contrastive_loss(z, z_global, z_previous, temperature, mask)

  return objective


def moon(setup: ClientSetup, options: MOONConfig) -> Algorithm:
  """MOON (module docstring).

  Args:
    setup: client training, executor and aggregator.
    options: a ``MOONConfig``.

  Returns:
    An ``Algorithm`` whose state holds the global model and every client's last local model.
  """
  train_cohort = setup.cohort_trainer(
    None,
    params_axis=None,
    context_axis=0,
    data_loss=contrastive_objective(
      apply_in(setup.compute_dtype, setup.model.apply_with_features),
      options.mu,
      options.temperature,
    ),
  )

  def init(key):
    return MOONState(*model_and_copies(setup, key))

  def train(carry):
    """Each client trains against the received model and its own previous one."""
    state, cohort = carry["state"], carry["cohort"]
    ids = cohort.client_ids
    previous = tree_gather(state.previous_params, ids)
    received = tree_broadcast(state.params, ids.shape[0])
    trained, result = train_cohort(state.params, cohort, carry["key"], (received, previous))
    return {**carry, "trained": trained, "result": result}

  def aggregate(carry):
    state, cohort, trained, key = carry["state"], carry["cohort"], carry["trained"], carry["key"]
    weights = client_weights(cohort, setup.weighting)
    params, aggregator_state = aggregate_models(
      setup, trained, weights, state.params, state.aggregator_state, key
    )
    metrics = training_metrics(carry["result"], trained, weights)
    previous = tree_scatter(state.previous_params, cohort.client_ids, trained)
    return {"state": MOONState(params, previous, aggregator_state), "metrics": metrics}

  round_fn = phases.Phases(phases.clients(train), phases.server(aggregate))

  return Algorithm(init, round_fn, global_params=lambda state: state.params)


ENTRY = AlgorithmEntry(
  lambda setup, options, config: moon(setup, options),
  MOONConfig,
  aggregated_uploads=True,
)
