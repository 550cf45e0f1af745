"""Ditto (Li, Hu, Beirami and Smith 2021): a global model trained as FedAvg and, beside it, a
personal model per client pulled toward the global one.

Round: sampled client ``k`` trains the global model ``w`` on its data as FedAvg does (``w_k``,
sent through the setup's aggregator: ``w <- A({w_k})``), and its own model ``v_k`` for
``personal_epochs`` epochs on ``f_k(v) + lambda / 2 * ||v - w||^2``, ``w`` the model of the
round's start (held fixed). ``v_k`` never leaves the client. ``lambda = 0`` makes ``v_k`` the
Local-only model, a large ``lambda`` the global one. Both trainings of a client use its round
key (the same batch order). Every ``v_k`` starts at the initial global model.
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
from fedjax_lab.ops.aggregate import tree_gather, tree_scatter
from fedjax_lab.ops.losses import proximal_penalty


@dataclasses.dataclass(frozen=True)
class DittoConfig:
  """``algorithm.ditto``: ``lam``, the pull toward the global model (Ditto's lambda);
  ``personal_epochs``: epochs on the personal model (0: ``local.epochs``)."""

  lam: float = 0.1
  personal_epochs: int = 0

  def __post_init__(self):
    require(self.lam >= 0, "algorithm.ditto.lam", ">= 0", self.lam)
    require(
      self.personal_epochs >= 0,
      "algorithm.ditto.personal_epochs",
      ">= 0 (0: local.epochs)",
      self.personal_epochs,
    )


@struct.dataclass
class DittoState:
  params: dict  # w
  personal: dict  # v_k, [num_clients, ...]
  aggregator_state: Any = ()


def ditto(setup: ClientSetup, options: DittoConfig) -> Algorithm:
  """Ditto (module docstring).

  Args:
    setup: client training (both models), executor and aggregator (global updates only).
    options: ``lam`` and ``personal_epochs``.

  Returns:
    An ``Algorithm`` with the global model and every client's personal model; a client
    receives and sends one model.
  """
  train_global = setup.cohort_trainer(None, params_axis=None, context_axis=None)
  personal_setup = setup
  if options.personal_epochs:
    schedule = dataclasses.replace(setup.schedule, epochs=options.personal_epochs, steps=0)
    personal_setup = dataclasses.replace(setup, schedule=schedule)
  pull = lambda params, anchor: proximal_penalty(params, anchor, options.lam)
  train_personal = personal_setup.cohort_trainer(pull, params_axis=0, context_axis=None)

  def init(key):
    return DittoState(*model_and_copies(setup, key))

  def train_global_model(carry):
    trained, result = train_global(carry["state"].params, carry["cohort"], carry["key"], None)
    return {**carry, "trained": trained, "result": result}

  def train_personal_models(carry):
    """Each client's ``v_k``, pulled towards the global model it received."""
    state, cohort = carry["state"], carry["cohort"]
    start = tree_gather(state.personal, cohort.client_ids)
    personal, _ = train_personal(start, cohort, carry["key"], state.params)
    return {**carry, "personal": personal}

  def aggregate(carry):
    state, cohort, trained, key = carry["state"], carry["cohort"], carry["trained"], carry["key"]
    weights = client_weights(cohort, setup.weighting)
    params, aggregator_state = aggregate_models(
      setup, trained, weights, state.params, state.aggregator_state, key
    )
    personal = tree_scatter(state.personal, cohort.client_ids, carry["personal"])
    metrics = training_metrics(carry["result"], trained, weights)
    return {"state": DittoState(params, personal, aggregator_state), "metrics": metrics}

  round_fn = phases.Phases(
    phases.clients(train_global_model),
    phases.clients(train_personal_models),
    phases.server(aggregate),
  )

  return Algorithm(
    init,
    round_fn,
    global_params=lambda state: state.params,
    personal_params=lambda state: state.personal,
  )


# Only the global update is sent, through the aggregator; an empty client takes no step.
ENTRY = AlgorithmEntry(
  lambda setup, options, config: ditto(setup, options),
  options=DittoConfig,
  aggregated_uploads=True,
  keeps_lost_clients=True,
)
