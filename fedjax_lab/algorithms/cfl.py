"""CFL: clustered federated learning (Sattler, Mueller and Samek, IEEE TNNLS 2020).

Start with one cluster; each round every client trains from its cluster's model and the
server averages within clusters (``clustered.py``). A cluster ``c`` is split when its clients
have reached a stationary point of the joint objective but not of their own:
``||sum_i n_i dtheta_i / sum_i n_i|| < eps1`` and ``max_i ||dtheta_i|| > eps2`` (with at least
2 clients). At most one cluster (the one with the largest ``max_i ||dtheta_i||``) is split per
round, into the optimal bipartition by complete-linkage clustering of the cosine similarities
of its clients' updates ``dtheta_i``. The split round's averages use the new clusters.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import Algorithm, AlgorithmEntry, ClientSetup
from fedjax_lab.algorithms.clustered import (
  PersonalizedConfig,
  initial_state,
  personalized_algorithm,
  train_clients,
)
from fedjax_lab.checks import require
from fedjax_lab.ops.aggregate import cluster_mean, segment_mean
from fedjax_lab.ops.cluster import agglomerative, count_clusters


def split_rule(updates, weights, labels, eps1: float, eps2: float):
  """CFL's split (module docstring) over flat client updates ``[N, P]``: the new labels, and
  the norms it decided on (``max_cluster_mean_update_norm``, ``max_client_update_norm``)."""
  size = labels.shape[0]
  mean_updates, _ = segment_mean(updates, weights, labels, size)
  mean_norm = jnp.linalg.norm(mean_updates, axis=1)  # [N] per cluster label
  client_norm = jnp.linalg.norm(updates, axis=1)
  max_norm = jax.ops.segment_max(client_norm, labels, size)
  cluster_size = jax.ops.segment_sum(jnp.ones(size), labels, size)
  splittable = (mean_norm < eps1) & (max_norm > eps2) & (cluster_size >= 2)
  target = jnp.argmax(jnp.where(splittable, max_norm, -jnp.inf))
  unit = updates / jnp.maximum(client_norm, 1e-12)[:, None]
  members = labels == target
  halves = agglomerative(unit @ unit.T, num_clusters=2, linkage="complete", members=members)
  norms = {
    "max_cluster_mean_update_norm": jnp.max(jnp.where(cluster_size > 0, mean_norm, 0)),
    "max_client_update_norm": jnp.max(client_norm),
  }
  return jnp.where(splittable.any() & members, halves, labels), norms


def cfl(
  setup: ClientSetup,
  *,
  eps1: float,
  eps2: float,
  finetune: bool = False,
) -> Algorithm:
  """CFL (module docstring).

  Args:
    setup: client training and executor.
    eps1: split when the cluster's mean update norm is below this...
    eps2: ...while its largest client update norm is above this.
    finetune: personal model = the client's locally trained model (else its cluster average).

  Returns:
    An ``Algorithm`` with per-client models and cluster labels, no global model.
  """
  train_cohort = setup.cohort_trainer(None, params_axis=0, context_axis=None)

  def train(carry):
    trained, weights, metrics = train_clients(
      train_cohort, carry["state"].client_params, carry["cohort"], carry["key"], setup.weighting
    )
    return {**carry, "trained": trained, "weights": weights, "metrics": metrics}

  def split_and_average(carry):
    state, trained, weights = carry["state"], carry["trained"], carry["weights"]
    updates = jax.vmap(lambda new, old: ravel_pytree(new)[0] - ravel_pytree(old)[0])(
      trained, state.client_params
    )  # [N, P]
    labels, norms = split_rule(updates, weights, state.labels, eps1, eps2)
    state = state.replace(
      client_params=cluster_mean(trained, weights, labels),
      trained_params=trained,
      labels=labels,
      round=state.round + 1,
    )
    metrics = {**carry["metrics"], "num_clusters": count_clusters(labels), **norms}
    return {"state": state, "metrics": metrics}

  round_fn = phases.Phases(phases.clients(train), phases.server(split_and_average))

  return personalized_algorithm(lambda key: initial_state(setup, key), round_fn, finetune=finetune)


@dataclasses.dataclass(frozen=True)
class CFLConfig(PersonalizedConfig):
  """CFL's split thresholds (``algorithm.cfl``). Both scale with the learning rate and local
  steps: the defaults suit the MLP benchmark of experiments/pfedlia (Sattler et al.'s 0.4 / 1.6
  were for their models); ``cfl`` logs both norms every round."""

  eps1: float = 0.12
  eps2: float = 0.35

  def __post_init__(self):
    require(self.eps1 > 0, "algorithm.cfl.eps1", "> 0", self.eps1)
    require(self.eps2 > 0, "algorithm.cfl.eps2", "> 0", self.eps2)


ENTRY = AlgorithmEntry(
  lambda setup, options, config: cfl(
    setup,
    eps1=options.eps1,
    eps2=options.eps2,
    finetune=options.finetune,
  ),
  CFLConfig,
  every_client_each_round=True,
)
