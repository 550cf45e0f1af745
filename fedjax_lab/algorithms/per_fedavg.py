"""Per-FedAvg (Fallah, Mokhtari and Ozdaglar 2020): FedAvg on the MAML objective
``F_k(w) = f_k(w - alpha * grad f_k(w))``, so that one local step from the global model fits
each client.

Each local step splits its batch in two halves ``D`` and ``D'`` and steps on
``f(w - alpha * grad f(w; D); D')``: with ``variant=first_order`` the inner gradient is held
fixed (``stop_gradient``), so the step is ``grad f(temp; D')`` at ``temp = w - alpha grad
f(w; D)`` (Per-FedAvg FO); with ``variant=hessian`` automatic differentiation gives the exact
``(I - alpha * hess f(w; D)) grad f(temp; D')`` (the paper's HF variant estimates that
Hessian-vector product by finite differences on a third batch; here it is exact). The trained
models go through the setup's aggregator. The personalized model is the global model after
local adaptation on the client's data (``eval_finetune_epochs``, the ``adapted_client_*``
metrics), the evaluation the method is built for.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  aggregate_models,
  client_weights,
  training_metrics,
)
from fedjax_lab.checks import one_of, require
from fedjax_lab.engine.local import cross_entropy_objective

VARIANTS = ("first_order", "hessian")


@dataclasses.dataclass(frozen=True)
class PerFedAvgConfig:
  """``algorithm.per_fedavg``: the inner step size ``alpha`` and the variant."""

  inner_learning_rate: float = 0.01
  variant: str = "first_order"

  def __post_init__(self):
    require(
      self.inner_learning_rate > 0,
      "algorithm.per_fedavg.inner_learning_rate",
      "> 0",
      self.inner_learning_rate,
    )
    one_of("algorithm.per_fedavg.variant", self.variant, VARIANTS)


@struct.dataclass
class PerFedAvgState:
  params: dict
  aggregator_state: Any = ()


def meta_objective(data_loss, inner_learning_rate: float, first_order: bool):
  """``objective(params, x, y, mask, context)``: ``f(params - alpha grad f(params; D); D')``
  with ``D``/``D'`` the first/second half of the batch (a half without real examples adds
  nothing: the masked mean of an empty half is 0)."""

  def objective(params, x, y, mask, context):
    half = x.shape[0] // 2
    inner = jax.grad(data_loss)(params, x[:half], y[:half], mask[:half], context)
    if first_order:
      inner = jax.lax.stop_gradient(inner)
    adapted = jax.tree.map(lambda p, g: p - inner_learning_rate * g, params, inner)
    return data_loss(adapted, x[half:], y[half:], mask[half:], context)

  return objective


def per_fedavg(setup: ClientSetup, options: PerFedAvgConfig) -> Algorithm:
  """Per-FedAvg (module docstring).

  Args:
    setup: client training (its batch is split in two halves), executor and aggregator.
    options: ``inner_learning_rate`` (alpha) and ``variant``.

  Returns:
    An ``Algorithm`` with a global model (to be adapted at evaluation); a client receives and
    sends one model.
  """
  require(
    setup.schedule.batch_size >= 2,
    "local.batch_size",
    ">= 2 for per_fedavg (each step splits its batch in two)",
    setup.schedule.batch_size,
  )
  objective = meta_objective(
    cross_entropy_objective(setup.train_apply),
    options.inner_learning_rate,
    options.variant == "first_order",
  )
  train = setup.cohort_trainer(None, params_axis=None, context_axis=None, data_loss=objective)

  def init(key):
    params = setup.init_params(key)
    return PerFedAvgState(params, setup.aggregator.init(setup.params_shape))

  def meta_train(carry):
    trained, result = train(carry["state"].params, carry["cohort"], carry["key"], None)
    return {**carry, "trained": trained, "result": result}

  def aggregate(carry):
    state, trained, key = carry["state"], carry["trained"], carry["key"]
    weights = client_weights(carry["cohort"], setup.weighting)
    params, aggregator_state = aggregate_models(
      setup, trained, weights, state.params, state.aggregator_state, key
    )
    metrics = training_metrics(carry["result"], trained, weights)
    return {"state": PerFedAvgState(params, aggregator_state), "metrics": metrics}

  round_fn = phases.Phases(phases.clients(meta_train), phases.server(aggregate))

  return Algorithm(init, round_fn, global_params=lambda state: state.params)


ENTRY = AlgorithmEntry(
  lambda setup, options, config: per_fedavg(setup, options),
  options=PerFedAvgConfig,
  aggregated_uploads=True,
  keeps_lost_clients=True,
)
