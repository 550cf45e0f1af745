"""Partial personalization: the model splits into a shared part ``w`` that the server
aggregates and a personal part ``p_k`` that never leaves client ``k`` (``ops.personalization``).

- FedPer (Arivazhagan et al. 2019): the read-out ``head`` is personal; body and head train
  together for ``local.epochs``.
- FedRep (Collins et al. 2021): the head is personal; client ``k`` first trains its head for
  ``head_epochs`` epochs with the body fixed, then the body for ``local.epochs`` with the new
  head fixed.
- LG-FedAvg (Liang et al. 2020): the body (the representation) is personal, the head shared;
  trained together.
- FedBN (Li et al. 2021): the normalization layers' scales and offsets are personal (here
  GroupNorm; a model without any is refused).

A round: each sampled client starts from ``merge(w, p_k)``; its trained shared part goes
through the setup's aggregator, ``w <- A({w_k}; weights)`` (the weighted mean by default; DP,
clipping and robust rules act on it), its personal part is written back to the state. Client
``k``'s model is ``merge(w, p_k)`` (``personal_params``); a client never sampled keeps the
initial personal part. Only ``w`` is sent, either way.
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
  personal_views,
  round_keys,
  training_metrics,
)
from fedjax_lab.checks import require
from fedjax_lab.engine.local import cross_entropy_objective, make_local_trainer
from fedjax_lab.ops import personalization
from fedjax_lab.ops.aggregate import tree_broadcast, tree_gather, tree_scatter

PERSONAL_PARTS = {
  "head": personalization.head_layers,
  "body": personalization.body_layers,
  "normalization": personalization.normalization_layers,
}


@struct.dataclass
class PartialState:
  shared: dict  # w
  personal: dict  # p_k, [num_clients, ...]
  aggregator_state: Any = ()


@dataclasses.dataclass(frozen=True)
class FedRepConfig:
  """``algorithm.fedrep``: epochs on the personal head (body fixed) before ``local.epochs`` on
  the body (head fixed)."""

  head_epochs: int = 5

  def __post_init__(self):
    require(self.head_epochs >= 1, "algorithm.fedrep.head_epochs", ">= 1", self.head_epochs)


def joint_trainer(setup: ClientSetup, is_personal):
  """``train(shared, personal, cohort, key) -> (shared rows, personal rows, result, trained
  models)``: each cohort client trains its merged model, both parts at once."""
  joint = setup.executor.map(setup.local_trainer(), (0, 0, 0, 0, 0, None), sort_by=3)

  def train_joint(shared, personal, cohort, key):
    merged = personalization.merge(tree_broadcast(shared, personal_rows(personal)), personal)
    trained, result = joint(
      merged, cohort.x, cohort.y, cohort.num_examples, round_keys(key, cohort), None
    )
    new_shared, new_personal = personalization.split(trained, is_personal)
    return new_shared, new_personal, result, trained

  return train_joint


def alternating_trainer(setup: ClientSetup, is_personal, head_epochs: int):
  """FedRep's schedule, as ``joint_trainer``'s ``train``: ``head_epochs`` epochs on the
  personal part (the shared one fixed), then the setup's epochs on the shared part."""
  loss = cross_entropy_objective(setup.train_apply)
  head_schedule = dataclasses.replace(setup.schedule, epochs=head_epochs, steps=0)

  def personal_objective(personal, x, y, mask, shared):
    return loss(personalization.merge(shared, personal), x, y, mask, None)

  def shared_objective(shared, x, y, mask, personal):
    return loss(personalization.merge(shared, personal), x, y, mask, None)

  head_trainer = make_local_trainer(
    personal_objective, setup.optimizer, head_schedule, setup.unroll
  )
  body_trainer = make_local_trainer(shared_objective, setup.optimizer, setup.schedule, setup.unroll)

  def alternating(shared, personal, x, y, num_examples, key):
    head_key, body_key = jax.random.split(key)
    personal, _ = head_trainer(personal, x, y, num_examples, head_key, shared)
    shared, result = body_trainer(shared, x, y, num_examples, body_key, personal)
    return shared, personal, result

  alternate = setup.executor.map(alternating, (None, 0, 0, 0, 0, 0), sort_by=4)

  def train_alternating(shared, personal, cohort, key):
    keys = round_keys(key, cohort)
    new_shared, new_personal, result = alternate(
      shared, personal, cohort.x, cohort.y, cohort.num_examples, keys
    )
    return new_shared, new_personal, result, personalization.merge(new_shared, new_personal)

  return train_alternating


def partial_personalization(
  setup: ClientSetup, personal_part: str, head_epochs: int | None = None, name: str = ""
) -> Algorithm:
  """Shared and personal parts (module docstring).

  Args:
    setup: client training, executor and aggregator (which sees only the shared part).
    personal_part: ``head`` (FedPer, FedRep), ``body`` (LG-FedAvg) or ``normalization``
      (FedBN): the layers each client keeps.
    head_epochs: None to train both parts together; else FedRep's schedule: that many epochs
      on the personal part (shared fixed), then the setup's epochs on the shared part.
    name: the method's config name, for the refusal of a model without a personal part.

  Returns:
    An ``Algorithm`` whose state holds ``w``, every client's ``p_k`` and the aggregator's
    state; a client receives and sends ``w``.
  """
  is_personal = PERSONAL_PARTS[personal_part]
  shared_shape, personal_shape = personalization.split(setup.params_shape, is_personal)
  paths = personalization.leaf_paths(setup.params_shape)
  require(
    bool(jax.tree.leaves(personal_shape)) and bool(jax.tree.leaves(shared_shape)),
    "model.name",
    f"a model with {personal_part} layers and others for algorithm.name={name} (its "
    f"parameters: {', '.join(paths[:6])}{', ...' if len(paths) > 6 else ''})",
    setup.model.name,
  )
  train = (
    joint_trainer(setup, is_personal)
    if head_epochs is None
    else alternating_trainer(setup, is_personal, head_epochs)
  )

  def init(key):
    shared, personal = personalization.split(setup.init_params(key), is_personal)
    return PartialState(
      shared, tree_broadcast(personal, setup.num_clients), setup.aggregator.init(shared_shape)
    )

  def train_parts(carry):
    state, cohort = carry["state"], carry["cohort"]
    personal = tree_gather(state.personal, cohort.client_ids)
    trained_parts = train(state.shared, personal, cohort, carry["key"])
    return {**carry, "trained_parts": trained_parts}

  def aggregate_shared(carry):
    """The shared part through the aggregator; each personal part written back."""
    state, cohort, key = carry["state"], carry["cohort"], carry["key"]
    shared_rows, personal_rows_new, result, trained = carry["trained_parts"]
    weights = client_weights(cohort, setup.weighting)
    shared, aggregator_state = aggregate_models(
      setup, shared_rows, weights, state.shared, state.aggregator_state, key
    )
    state = PartialState(
      shared, tree_scatter(state.personal, cohort.client_ids, personal_rows_new), aggregator_state
    )
    return {"state": state, "metrics": training_metrics(result, trained, weights)}

  round_fn = phases.Phases(phases.clients(train_parts), phases.server(aggregate_shared))

  def personal_params_of(state, client_ids):
    rows = tree_gather(state.personal, client_ids)
    return personalization.merge(tree_broadcast(state.shared, len(client_ids)), rows)

  return Algorithm(
    init,
    round_fn,
    **personal_views(personal_params_of, setup.num_clients),
    download=shared_shape,
    upload=shared_shape,
  )


def personal_rows(stacked) -> int:
  """The leading (client) axis length of a stacked pytree."""
  return jax.tree.leaves(stacked)[0].shape[0]


def _entry(personal_part: str, name: str, options: type | None = None) -> AlgorithmEntry:
  def build(setup, options, config):
    head_epochs = options.head_epochs if isinstance(options, FedRepConfig) else None
    return partial_personalization(setup, personal_part, head_epochs, name)

  extra = {"options": options} if options is not None else {}
  # Only the shared part is sent, through the aggregator; an empty client takes no step, so
  # its personal part is written back unchanged and its weight is 0.
  return AlgorithmEntry(build, aggregated_uploads=True, keeps_lost_clients=True, **extra)


FEDPER = _entry("head", "fedper")
FEDREP = _entry("head", "fedrep", FedRepConfig)
LG_FEDAVG = _entry("body", "lg_fedavg")
FEDBN = _entry("normalization", "fedbn")
