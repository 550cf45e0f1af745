"""pFedMe (T Dinh, Tran and Nguyen 2020): personalized models as Moreau envelopes.

Client ``k`` keeps a local copy ``w_k`` of the global model and a personal model ``theta_k``.
At each local step on a batch: ``theta`` takes ``inner_steps`` gradient steps of size
``personal_learning_rate`` on ``f_k(theta; batch) + lam / 2 * ||theta - w_k||^2`` (warm-started
from its last value), approximating ``theta*(w_k)``; then ``w_k <- w_k - eta * lam * (w_k -
theta*)`` (``eta``: ``local.learning_rate``), a step on the Moreau envelope. Written as one
objective over ``(w_k, theta)`` whose plain-SGD step is exactly that: ``lam / 2 * ||w_k -
sg(theta*)||^2 + 1 / (2 eta) * ||theta - sg(theta*)||^2`` (its value reported as the personal
model's batch loss); hence local SGD without momentum. Server: ``w <- (1 - beta) w + beta *
A({w_k})`` through the setup's aggregator. ``theta_k`` stays on the client and is its model;
at the start of a client's round it resumes from its stored ``theta_k``.
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
  model_and_copies,
  training_metrics,
)
from fedjax_lab.checks import require
from fedjax_lab.engine.local import cross_entropy_objective
from fedjax_lab.ops.aggregate import tree_broadcast, tree_gather, tree_scatter
from fedjax_lab.ops.losses import proximal_penalty


@dataclasses.dataclass(frozen=True)
class PFedMeConfig:
  """``algorithm.pfedme``: the Moreau strength ``lam``, the inner solver (``inner_steps`` of
  ``personal_learning_rate``) and the server's mixing ``beta``."""

  lam: float = 15.0
  personal_learning_rate: float = 0.01
  inner_steps: int = 5
  beta: float = 1.0

  def __post_init__(self):
    prefix = "algorithm.pfedme."
    require(self.lam > 0, prefix + "lam", "> 0", self.lam)
    require(
      self.personal_learning_rate > 0,
      prefix + "personal_learning_rate",
      "> 0",
      self.personal_learning_rate,
    )
    require(self.inner_steps >= 1, prefix + "inner_steps", ">= 1", self.inner_steps)
    require(0 < self.beta <= 2, prefix + "beta", "in (0, 2]", self.beta)


@struct.dataclass
class PFedMeState:
  params: dict  # w
  personal: dict  # theta_k, [num_clients, ...]
  aggregator_state: Any = ()


def inner_solution(data_loss, params, anchor, x, y, mask, options: PFedMeConfig):
  """``theta*``: ``inner_steps`` gradient steps from ``params`` on ``f(theta; batch) + lam / 2
  ||theta - anchor||^2``."""

  def step(theta, _):
    regularized = lambda t: (
      data_loss(t, x, y, mask, None) + proximal_penalty(t, anchor, options.lam)
    )
    grads = jax.grad(regularized)(theta)
    return jax.tree.map(lambda t, g: t - options.personal_learning_rate * g, theta, grads), None

  theta, _ = jax.lax.scan(step, params, None, length=options.inner_steps)
  return theta


def pfedme_objective(data_loss, options: PFedMeConfig, learning_rate: float):
  """``objective((w, theta), x, y, mask, context)`` whose plain-SGD step of ``learning_rate``
  is pFedMe's local step (module docstring); its value is ``f(theta*; batch)``."""

  def objective(pair, x, y, mask, context):
    w, theta = pair
    target = jax.lax.stop_gradient(inner_solution(data_loss, theta, w, x, y, mask, options))
    surrogate = proximal_penalty(w, target, options.lam) + proximal_penalty(
      theta, target, 1.0 / learning_rate
    )
    value = jax.lax.stop_gradient(data_loss(target, x, y, mask, None))
    return value + surrogate - jax.lax.stop_gradient(surrogate)

  return objective


def pfedme(setup: ClientSetup, options: PFedMeConfig, learning_rate: float) -> Algorithm:
  """pFedMe (module docstring).

  Args:
    setup: client training (plain SGD of ``learning_rate``), executor and aggregator.
    options: ``lam``, ``personal_learning_rate``, ``inner_steps``, ``beta``.
    learning_rate: ``eta``, the local SGD step size.

  Returns:
    An ``Algorithm`` with the global model and every client's ``theta_k``; a client receives
    and sends one model.
  """
  objective = pfedme_objective(cross_entropy_objective(setup.train_apply), options, learning_rate)
  train = setup.executor.map(
    setup.local_trainer(data_loss=objective), (0, 0, 0, 0, 0, None), sort_by=3
  )

  def init(key):
    return PFedMeState(*model_and_copies(setup, key))

  def train_both(carry):
    """Each client's local copy ``w_k`` and personal model ``theta_k`` (Moreau envelope)."""
    state, cohort = carry["state"], carry["cohort"]
    size = cohort.client_ids.shape[0]
    start = (tree_broadcast(state.params, size), tree_gather(state.personal, cohort.client_ids))
    keys = jax.random.split(carry["key"], size)
    trained, result = train(start, cohort.x, cohort.y, cohort.num_examples, keys, None)
    return {**carry, "trained": trained, "result": result}

  def server_step(carry):
    """``w <- (1 - beta) w + beta A(w_k)``; the personal models kept."""
    state, cohort, key, result = carry["state"], carry["cohort"], carry["key"], carry["result"]
    trained, personal = carry["trained"]
    weights = client_weights(cohort, setup.weighting)
    aggregate, aggregator_state = aggregate_models(
      setup, trained, weights, state.params, state.aggregator_state, key
    )
    params = jax.tree.map(
      lambda w, a: (1 - options.beta) * w + options.beta * a, state.params, aggregate
    )
    personal = tree_scatter(state.personal, cohort.client_ids, personal)
    metrics = training_metrics(result, trained, weights)
    return {"state": PFedMeState(params, personal, aggregator_state), "metrics": metrics}

  round_fn = phases.Phases(phases.clients(train_both), phases.server(server_step))

  return Algorithm(
    init,
    round_fn,
    global_params=lambda state: state.params,
    personal_params=lambda state: state.personal,
  )


def _build(setup, options, config):
  require(
    config.local.optimizer == "sgd" and config.local.momentum == 0,
    "local.optimizer",
    "sgd with local.momentum=0 for pfedme (its local step is a plain SGD step)",
    f"{config.local.optimizer} (momentum {config.local.momentum})",
  )
  return pfedme(setup, options, config.local.learning_rate)


# Only the local copies w_k are sent, through the aggregator; an empty client takes no step.
ENTRY = AlgorithmEntry(
  _build, options=PFedMeConfig, aggregated_uploads=True, keeps_lost_clients=True
)
