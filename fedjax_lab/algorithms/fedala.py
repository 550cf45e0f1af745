"""FedALA (Zhang, Hua, Wang, Song, Xue, Ma and Guan 2023): FedAvg whose clients start each
round from an adaptive local aggregation of the global model and their own last model.

Round: sampled client ``k`` holds its last trained model ``l_k`` and ALA weights ``W_k``
(ones at the start). It receives the global model ``g`` and builds its start model
``theta_k``: the lower layers are ``g``'s, the top ``layers`` are
``l_k + (g - l_k) * W_k`` (``ops.adaptive_aggregation``). ``W_k`` is first trained on a
random ``sample_fraction`` of the client's examples by ``W <- clip(W - learning_rate *
dL/dW, 0, 1)`` in batches of the local batch size: one epoch a round, except the client's
first adaptation (the start phase), which runs epochs until the standard deviation of the
last ``patience`` epochs' mean losses falls under ``threshold`` (at most
``max_start_epochs``). A client that has never trained takes ``g`` as it is (its own model is
still the initial one). The client then trains ``theta_k`` as FedAvg does, keeps the result
as ``l_k`` and sends it through the setup's aggregator: ``g <- A({l_k})``.

The model a client uses (evaluation) is its last trained ``l_k`` (the global model before it
first trains). The official code evaluates the next round's start model instead, which needs
the adaptation's data pass at evaluation time.
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
from fedjax_lab.engine.local import LocalSchedule, cross_entropy_objective, make_local_trainer
from fedjax_lab.ops import adaptive_aggregation as ala
from fedjax_lab.ops.aggregate import tree_gather, tree_gather_or, tree_scatter, tree_select
from fedjax_lab.ops.personalization import merge, split

NEVER_TRAINED, TRAINED, ADAPTED = 0, 1, 2  # a client's phase


@dataclasses.dataclass(frozen=True)
class FedALAConfig:
  """``algorithm.fedala``: ALA's step size (eta), the fraction of a client's examples it
  learns on (s), the top layers it adapts (p), and the start phase's stopping rule
  (``threshold`` on the standard deviation of the last ``patience`` epochs' losses, at most
  ``max_start_epochs`` epochs). Defaults: the official code's (eta 1, s 80%, threshold 0.1,
  10 losses)."""

  learning_rate: float = 1.0
  sample_fraction: float = 0.8
  layers: int = 1
  threshold: float = 0.1
  patience: int = 10
  max_start_epochs: int = 50

  def __post_init__(self):
    require(self.learning_rate > 0, "algorithm.fedala.learning_rate", "> 0", self.learning_rate)
    require(
      0 < self.sample_fraction <= 1,
      "algorithm.fedala.sample_fraction",
      "in (0, 1]",
      self.sample_fraction,
    )
    require(self.layers >= 1, "algorithm.fedala.layers", ">= 1", self.layers)
    require(self.threshold >= 0, "algorithm.fedala.threshold", ">= 0", self.threshold)
    require(self.patience >= 1, "algorithm.fedala.patience", ">= 1", self.patience)
    require(
      self.max_start_epochs >= 1,
      "algorithm.fedala.max_start_epochs",
      ">= 1",
      self.max_start_epochs,
    )


@struct.dataclass
class FedALAState:
  params: dict  # g
  local: dict  # l_k, [num_clients, ...]
  weights: dict  # W_k, [num_clients, top layers ...]
  phase: jax.Array  # [num_clients] int32: NEVER_TRAINED, TRAINED or ADAPTED
  aggregator_state: Any = ()


def adaptive_start(setup: ClientSetup, options: FedALAConfig):
  """One client's ALA (module docstring).

  Args:
    setup: the model, the local batch size and the largest client.
    options: ALA's settings.

  Returns:
    ``start(g, l, W, x, y, num_examples, key, phase) -> (theta, W, epochs)``: the client's
    start model, its new weights and the epochs ALA ran (0 for a client that never trained).
  """
  adapted = ala.top_layers(setup.layer_groups, options.layers)
  loss = cross_entropy_objective(setup.train_apply)

  def objective(weights, x, y, mask, context):
    lower, top_global, top_local = context
    return loss(merge(lower, ala.blend(top_global, top_local, weights)), x, y, mask, None)

  schedule = LocalSchedule(setup.schedule.batch_size, setup.schedule.max_examples, epochs=1)
  one_epoch = make_local_trainer(
    objective, ala.unit_box_sgd(options.learning_rate), schedule, setup.unroll
  )

  def start(global_params, local_params, weights, x, y, num_examples, key, phase):
    lower, top_global = split(global_params, adapted)
    _, top_local = split(local_params, adapted)
    positions = jnp.arange(x.shape[0])
    order_key, epochs_key = jax.random.split(key)
    scores = jax.random.uniform(order_key, positions.shape)
    order = jnp.argsort(jnp.where(positions < num_examples, scores, 2.0))
    sample = jnp.ceil(options.sample_fraction * num_examples).astype(num_examples.dtype)
    x, y = x[order], y[order]
    limit = jnp.where(phase == ADAPTED, 1, options.max_start_epochs)
    limit = jnp.where((phase == NEVER_TRAINED) | (num_examples == 0), 0, limit)
    context = (lower, top_global, top_local)

    def more(carry):
      epoch, _, recent = carry
      return (epoch < limit) & ~ala.settled(recent, epoch, options.threshold)

    def epoch_step(carry):
      epoch, weights, recent = carry
      epoch_key = jax.random.fold_in(epochs_key, epoch)
      weights, result = one_epoch(weights, x, y, sample, epoch_key, context)
      return epoch + 1, weights, jnp.roll(recent, -1).at[-1].set(result.mean_loss)

    recent = jnp.zeros((options.patience,), jnp.float32)
    epochs, weights, _ = jax.lax.while_loop(more, epoch_step, (jnp.int32(0), weights, recent))
    theta = merge(lower, ala.blend(top_global, top_local, weights))
    theta = jax.tree.map(lambda t, g: jnp.where(phase == NEVER_TRAINED, g, t), theta, global_params)
    return theta, weights, epochs

  return start


def fedala(setup: ClientSetup, options: FedALAConfig) -> Algorithm:
  """FedALA (module docstring).

  Args:
    setup: client training, executor and aggregator (the trained models).
    options: ALA's settings (``FedALAConfig``).

  Returns:
    An ``Algorithm`` with the global model, each client's last model and ALA weights; a client
    receives and sends one model.
  """
  start = setup.executor.map(adaptive_start(setup, options), (None, 0, 0, 0, 0, 0, 0, 0), sort_by=5)
  train = setup.cohort_trainer(None, params_axis=0, context_axis=None)
  adapted = ala.top_layers(setup.layer_groups, options.layers)

  def init(key):
    params, copies, aggregator_state = model_and_copies(setup, key)
    weights = jax.tree.map(jnp.ones_like, split(copies, adapted)[1])
    phase = jnp.full((setup.num_clients,), NEVER_TRAINED, jnp.int32)
    return FedALAState(params, copies, weights, phase, aggregator_state)

  def adapt(carry):
    """Client phase 1: each client's start model, by ALA on its data."""
    state, cohort, key = carry["state"], carry["cohort"], carry["key"]
    ids = cohort.client_ids
    ala_keys = jax.random.split(jax.random.fold_in(key, ADAPTED), ids.shape[0])
    local = tree_gather(state.local, ids)
    theta, weights, epochs = start(
      state.params,
      local,
      tree_gather(state.weights, ids),
      cohort.x,
      cohort.y,
      cohort.num_examples,
      ala_keys,
      state.phase[ids],
    )
    return {**carry, "local": local, "theta": theta, "ala_weights": weights, "epochs": epochs}

  def local_training(carry):
    """Client phase 2: local training from the adapted start."""
    trained, result = train(carry["theta"], carry["cohort"], carry["key"], None)
    return {**carry, "trained": trained, "result": result}

  def aggregate(carry):
    state, cohort, key, trained = carry["state"], carry["cohort"], carry["key"], carry["trained"]
    ids, present = cohort.client_ids, cohort.num_examples > 0
    kept = tree_select(present, trained, carry["local"])
    client_weight = client_weights(cohort, setup.weighting)
    params, aggregator_state = aggregate_models(
      setup, trained, client_weight, state.params, state.aggregator_state, key
    )
    phase = state.phase[ids]
    phase = jnp.where(present, jnp.where(phase == NEVER_TRAINED, TRAINED, ADAPTED), phase)
    state = FedALAState(
      params,
      tree_scatter(state.local, ids, kept),
      tree_scatter(state.weights, ids, carry["ala_weights"]),
      state.phase.at[ids].set(phase),
      aggregator_state,
    )
    metrics = training_metrics(carry["result"], trained, client_weight)
    metrics["ala_epochs_mean"] = jnp.mean(carry["epochs"].astype(jnp.float32))
    leaves = jax.tree.leaves(state.weights)
    metrics["ala_weight_mean"] = sum(jnp.sum(w) for w in leaves) / sum(w.size for w in leaves)
    return {"state": state, "metrics": metrics}

  round_fn = phases.Phases(
    phases.clients(adapt), phases.clients(local_training), phases.server(aggregate)
  )

  def personal_params_of(state, client_ids):
    return tree_gather_or(state.local, client_ids, state.phase != NEVER_TRAINED, state.params)

  return Algorithm(
    init,
    round_fn,
    global_params=lambda state: state.params,
    **personal_views(personal_params_of, setup.num_clients),
  )


# Only the trained models are sent, through the aggregator. An empty client trains nothing,
# weighs 0 and keeps its model, weights (no ALA epoch) and phase.
ENTRY = AlgorithmEntry(
  lambda setup, options, config: fedala(setup, options),
  options=FedALAConfig,
  aggregated_uploads=True,
  keeps_lost_clients=True,
)
