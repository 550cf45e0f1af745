"""IFCA: the Iterative Federated Clustering Algorithm (Ghosh et al., NeurIPS 2020), model
averaging variant.

The server keeps ``k`` cluster models, each from its own random initialization. Each round
every client evaluates all ``k`` on its training data and joins the one of lowest loss,
``c_i = argmin_c L_i(theta_c)``, trains it locally, and the server averages the trained models
per cluster: ``theta_c <- sum_{i: c_i = c} n_i theta_i / sum n_i`` (a cluster nobody joined
keeps its model). Each client's personal model is its cluster's model (or, with ``finetune``,
its locally trained one). Every client downloads all ``k`` models.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import Algorithm, AlgorithmEntry, ClientSetup
from fedjax_lab.algorithms.clustered import PersonalizedConfig, train_clients
from fedjax_lab.checks import require
from fedjax_lab.ops.aggregate import segment_mean, tree_gather
from fedjax_lab.ops.cluster import canonical_labels, count_clusters
from fedjax_lab.ops.influence import masked_metrics


@struct.dataclass
class IFCAState:
  cluster_params: dict  # [k, ...]
  trained_params: dict  # [N, ...] each client's model after its latest local training
  choices: jax.Array  # [N] the cluster each client joined last


def ifca(
  setup: ClientSetup,
  num_clusters: int,
  *,
  finetune: bool = False,
  chunk_size: int = 16,
) -> Algorithm:
  """IFCA (module docstring).

  Args:
    setup: client training and executor.
    num_clusters: ``k``, the number of cluster models.
    finetune: personal model = the client's locally trained model (else its cluster's).
    chunk_size: clients per chunk when every client scores the ``k`` models.

  Returns:
    An ``Algorithm`` with per-client models and cluster labels; a client receives ``k`` models.
  """
  train_cohort = setup.cohort_trainer(None, params_axis=0, context_axis=None)
  metrics_fn = masked_metrics(setup.model.apply)

  def init(key):
    cluster_params = jax.vmap(setup.init_params)(jax.random.split(key, num_clusters))
    choices = jnp.zeros(setup.num_clients, jnp.int32)
    return IFCAState(cluster_params, tree_gather(cluster_params, choices), choices)

  def choose(carry):
    """Each client picks the cluster model with the lowest loss on its data."""
    state, cohort = carry["state"], carry["cohort"]

    def losses_of(args):
      x, y, n = args
      return jax.vmap(lambda p: metrics_fn(p, x, y, n)[0])(state.cluster_params)

    losses = jax.lax.map(
      losses_of, (cohort.x, cohort.y, cohort.num_examples), batch_size=chunk_size
    )
    choices = jnp.argmin(losses, axis=1).astype(jnp.int32)
    return {**carry, "choices": choices, "start": tree_gather(state.cluster_params, choices)}

  def train(carry):
    trained, weights, metrics = train_clients(
      train_cohort, carry["start"], carry["cohort"], carry["key"], setup.weighting
    )
    return {**carry, "trained": trained, "weights": weights, "metrics": metrics}

  def average_clusters(carry):
    state, trained, choices = carry["state"], carry["trained"], carry["choices"]
    means, totals = segment_mean(trained, carry["weights"], choices, num_clusters)
    joined = lambda leaf: (totals > 0).reshape((-1,) + (1,) * (leaf.ndim - 1))
    cluster_params = jax.tree.map(
      lambda new, old: jnp.where(joined(old), new, old), means, state.cluster_params
    )
    metrics = {**carry["metrics"], "num_clusters": count_clusters(canonical_labels(choices))}
    return {"state": IFCAState(cluster_params, trained, choices), "metrics": metrics}

  round_fn = phases.Phases(
    phases.server(choose), phases.clients(train), phases.server(average_clusters)
  )

  personal = (
    (lambda state: state.trained_params)
    if finetune
    else (lambda state: tree_gather(state.cluster_params, state.choices))
  )
  return Algorithm(
    init,
    round_fn,
    personal_params=personal,
    client_clusters=lambda state: canonical_labels(state.choices),
    download=(setup.params_shape,) * num_clusters,
  )


@dataclasses.dataclass(frozen=True)
class IFCAConfig(PersonalizedConfig):
  """IFCA's options (``algorithm.ifca``): ``k`` cluster models."""

  num_clusters: int = 4

  def __post_init__(self):
    require(self.num_clusters >= 2, "algorithm.ifca.num_clusters", ">= 2", self.num_clusters)


ENTRY = AlgorithmEntry(
  lambda setup, options, config: ifca(setup, options.num_clusters, finetune=options.finetune),
  IFCAConfig,
  every_client_each_round=True,
)
