"""Personalized FL by client clusters: the state and round shared by pFedLIA, CFL and the
Oracle, and the Oracle itself (clusters = the true latent groups).

Every client takes part in every round (cohort ``i`` is client ``i``). A round trains each
client from its own start model and aggregates the trained models within each cluster
(``ops.aggregate.cluster_mean``: ``theta_i <- sum_{j in c(i)} n_j theta_j / sum n_j``) or over
each client's neighbourhood (``neighbourhood_mean``). A client's personal model is its cluster
average, or with ``finetune`` its model after its latest local training.

Cluster averages are segment sums (one pass over the clients whatever the cluster count), not
the setup's aggregator: a robust or private rule per cluster would need a segment form of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  client_weights,
)
from fedjax_lab.data import Cohort
from fedjax_lab.ops.aggregate import cluster_mean, tree_broadcast, weighted_mean
from fedjax_lab.ops.cluster import canonical_labels, count_clusters


@struct.dataclass
class ClusteredState:
  client_params: dict  # [N, ...] each client's start model: its cluster's average
  trained_params: dict  # [N, ...] each client's model after its latest local training
  labels: jax.Array  # [N] canonical cluster labels
  adjacency: jax.Array  # [N, N] collaborators (decentralized pFedLIA only)
  round: jax.Array  # rounds completed
  aggregator_state: Any = ()  # of the setup's aggregator (global rounds, e.g. a warm-up)


@dataclasses.dataclass(frozen=True)
class PersonalizedConfig:
  """Options every clustered method shares: ``finetune`` evaluates each client's locally
  trained model instead of its cluster average."""

  finetune: bool = False


def initial_state(setup: ClientSetup, key: jax.Array) -> ClusteredState:
  """One shared initialization, every client in cluster 0 and everyone's collaborator."""
  params = tree_broadcast(setup.init_params(key), setup.num_clients)
  size = setup.num_clients
  return ClusteredState(
    params,
    params,
    jnp.zeros(size, jnp.int32),
    jnp.ones((size, size), bool),
    jnp.zeros((), jnp.int32),
    setup.aggregator.init(setup.params_shape),
  )


def train_clients(
  train_cohort: Callable, start_params, cohort: Cohort, key: jax.Array, weighting: str
):
  """Train every client from its row of ``start_params``: ``(trained, weights, metrics)``."""
  trained, result = train_cohort(start_params, cohort, key, None)
  weights = client_weights(cohort, weighting)
  return trained, weights, {"train_loss": weighted_mean(result.mean_loss, weights)}


def personalized_algorithm(
  init, round_fn, *, finetune: bool, host_phases: bool = False, privacy=None
) -> Algorithm:
  """Wrap a clustered round into the ``Algorithm`` contract.

  Args:
    init: ``init(key) -> ClusteredState``.
    round_fn: the round over a ``ClusteredState``.
    finetune: personal model = each client's locally trained model (else its cluster average).
    host_phases: the round picks compiled phases on the host.
    privacy: ``Algorithm.privacy``, if the method spends privacy itself.

  Returns:
    An ``Algorithm`` with per-client models and cluster labels, no global model.
  """
  personal = (
    (lambda state: state.trained_params) if finetune else (lambda state: state.client_params)
  )
  return Algorithm(
    init,
    round_fn,
    personal_params=personal,
    client_clusters=lambda state: state.labels,
    host_phases=host_phases,
    privacy=privacy,
  )


def oracle(setup: ClientSetup, true_groups, *, finetune: bool = False) -> Algorithm:
  """FedAvg within each true group from the first round: the clustering upper reference.

  Args:
    setup: client training and executor.
    true_groups: ``[num_clients]`` the federation's latent group of each client.
    finetune: personal model = the client's locally trained model (else its group average).

  Returns:
    An ``Algorithm`` with per-client models and cluster labels, no global model.
  """
  labels = canonical_labels(jnp.asarray(true_groups, jnp.int32))
  train_cohort = setup.cohort_trainer(None, params_axis=0, context_axis=None)

  def init(key):
    return initial_state(setup, key).replace(labels=labels)

  def train(carry):
    trained, weights, metrics = train_clients(
      train_cohort, carry["state"].client_params, carry["cohort"], carry["key"], setup.weighting
    )
    return {**carry, "trained": trained, "weights": weights, "metrics": metrics}

  def group_means(carry):
    state, trained = carry["state"], carry["trained"]
    metrics = {**carry["metrics"], "num_clusters": count_clusters(state.labels)}
    state = state.replace(
      client_params=cluster_mean(trained, carry["weights"], state.labels),
      trained_params=trained,
      round=state.round + 1,
    )
    return {"state": state, "metrics": metrics}

  round_fn = phases.Phases(phases.clients(train), phases.server(group_means))

  return personalized_algorithm(init, round_fn, finetune=finetune)


def _oracle(setup: ClientSetup, options: PersonalizedConfig, config) -> Algorithm:
  if setup.client_groups is None:
    raise ValueError(
      "algorithm.name='oracle' needs a federation with known client groups "
      "(data.latent_groups > 0, or Shakespeare with data.partition='natural')"
    )
  return oracle(setup, setup.client_groups, finetune=options.finetune)


ORACLE = AlgorithmEntry(_oracle, PersonalizedConfig, every_client_each_round=True)
