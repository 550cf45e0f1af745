"""pFedLIA: personalized FL by clustering clients with a lazy influence approximation
(arXiv 2505.02540). No official code is public; the choices the paper leaves open are settings
(``PFedLIAConfig``) and are listed here.

Rounds, every client taking part:

1. Warm-up, ``warmup_rounds`` rounds: FedAvg (the setup's aggregator); every client's start
   model is the global model (``theta0``).
2. Influence phase, the first round after the warm-up (and every ``recluster_every`` rounds if
   set): each client holds out ``validation_fraction`` of its training examples (a seeded
   random draw, ``validation_split=random``, or its first rows, ``first``), trains from
   its start model on the rest, and scores every trained model on its held-out split
   (``ops.influence``; from the shared ``theta0`` this is the lazy influence, on re-clustering
   each scorer compares against its own current model). Central variants symmetrize the
   ``N x N`` scores and cluster them (``agglomerative`` with ``num_clusters`` or a
   ``threshold``, or ``spectral``); ``decentralized`` lets each client pick collaborators
   (positive or top-k influence on it). The trained models are then aggregated by the new
   clusters or neighbourhoods.
3. Personalized rounds: local training from each client's start model, then FedAvg within
   its cluster (segment sums) or over its neighbourhood (row-normalized weights).

Phases are chosen on the host from ``state.round``; each phase is its own compiled program.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import AGGREGATION_STREAM, Algorithm, AlgorithmEntry, ClientSetup
from fedjax_lab.algorithms.clustered import (
  ClusteredState,
  PersonalizedConfig,
  initial_state,
  personalized_algorithm,
  train_clients,
)
from fedjax_lab.checks import one_of, require
from fedjax_lab.ops.accounting import randomized_response_epsilon
from fedjax_lab.ops.aggregate import cluster_mean, neighbourhood_mean, tree_broadcast
from fedjax_lab.ops.cluster import (
  LINKAGES,
  agglomerative,
  count_clusters,
  neighbourhood_labels,
  neighbourhoods,
  spectral,
  symmetrize,
)
from fedjax_lab.ops.communication import tree_bytes
from fedjax_lab.ops.influence import (
  INFLUENCE_KINDS,
  drop_leading,
  influence_cost,
  influence_matrix,
  masked_metrics,
  randomized_response,
  real_rows_shuffled,
  validation_sizes,
)

RESPONSE_STREAM = 0x11A  # fold_in constant: randomized-response key
SPECTRAL_STREAM = 0x5BE  # fold_in constant: k-means key
SPLIT_STREAM = 0x5B1  # fold_in constant: the held-out draw


CLUSTERINGS = ("agglomerative", "spectral", "decentralized")


@dataclasses.dataclass(frozen=True)
class PFedLIAConfig(PersonalizedConfig):
  """pFedLIA's options (``algorithm.pfedlia``): warm-up, lazy-influence phase, clustering."""

  warmup_rounds: int = 5  # FedAvg rounds giving the shared start theta0 (0 allowed)
  recluster_every: int = 0  # > 0: a new influence phase every this many rounds
  validation_fraction: float = 0.2  # of each client's training examples, held out for scoring
  validation_split: str = "random"  # random (seeded draw) | first (rows in dataset order)
  influence: str = "loss"  # loss | accuracy | vote
  vote_epsilon: float = 0.0  # > 0: randomized response on votes (eps-local DP)
  vote_delta: float = 1e-5  # the delta at which the votes' composed epsilon is reported
  clustering: str = "agglomerative"  # agglomerative | spectral (central) | decentralized
  linkage: str = "average"
  num_clusters: int = 0  # 0: agglomerative stops at `threshold`; spectral needs > 0
  threshold: float = 0.0  # merge while the linkage similarity is >= this
  neighbours: str = "positive"  # decentralized collaborators: positive | top_k
  top_k: int = 5
  chunk_size: int = 16  # scorers per chunk of the N x N influence matrix

  def __post_init__(self):
    p = "algorithm.pfedlia."
    require(self.warmup_rounds >= 0, p + "warmup_rounds", ">= 0", self.warmup_rounds)
    require(self.recluster_every >= 0, p + "recluster_every", ">= 0", self.recluster_every)
    require(
      0 < self.validation_fraction < 1,
      p + "validation_fraction",
      "in (0, 1)",
      self.validation_fraction,
    )
    one_of(p + "validation_split", self.validation_split, ("random", "first"))
    one_of(p + "influence", self.influence, INFLUENCE_KINDS)
    require(self.vote_epsilon >= 0, p + "vote_epsilon", ">= 0", self.vote_epsilon)
    require(0 < self.vote_delta < 1, p + "vote_delta", "in (0, 1)", self.vote_delta)
    if self.vote_epsilon > 0:
      require(
        self.influence == "vote", p + "vote_epsilon", "0 unless influence='vote'", self.vote_epsilon
      )
    one_of(p + "clustering", self.clustering, CLUSTERINGS)
    one_of(p + "linkage", self.linkage, LINKAGES)
    require(self.num_clusters >= 0, p + "num_clusters", ">= 0", self.num_clusters)
    if self.clustering == "spectral":
      require(
        self.num_clusters >= 2,
        p + "num_clusters",
        ">= 2 for spectral clustering",
        self.num_clusters,
      )
    one_of(p + "neighbours", self.neighbours, ("positive", "top_k"))
    require(self.top_k >= 1, p + "top_k", ">= 1", self.top_k)
    require(self.chunk_size >= 1, p + "chunk_size", ">= 1", self.chunk_size)


def scoring_split(cohort, key: jax.Array, fraction: float, split: str):
  """``(cohort, fit_cohort, held_out)`` for an influence phase: each client's first
  ``held_out[i]`` rows of the returned ``cohort`` are its scoring split (``fraction`` of its
  examples, ``ops.influence.validation_sizes``) and ``fit_cohort`` holds its other real rows
  first, the ones it trains on. ``split="random"`` first shuffles each client's real rows with
  its own key from ``key``; ``"first"`` holds out the rows in dataset order."""
  if split == "random":
    keys = jax.random.split(key, cohort.num_examples.shape[0])
    order = jax.vmap(real_rows_shuffled, in_axes=(0, 0, None))(
      keys, cohort.num_examples, cohort.x.shape[1]
    )
    take = jax.vmap(lambda rows, positions: rows[positions])
    cohort = dataclasses.replace(cohort, x=take(cohort.x, order), y=take(cohort.y, order))
  held_out = validation_sizes(cohort.num_examples, fraction)
  fit_cohort = dataclasses.replace(
    cohort,
    x=jax.vmap(drop_leading)(cohort.x, held_out),
    y=jax.vmap(drop_leading)(cohort.y, held_out),
    num_examples=cohort.num_examples - held_out,
  )
  return cohort, fit_cohort, held_out


def is_influence_round(round_index: int, warmup_rounds: int, recluster_every: int) -> bool:
  since = round_index - warmup_rounds
  return since == 0 or (since > 0 and recluster_every > 0 and since % recluster_every == 0)


def personalized_mean(decentralized: bool, trained, weights, labels, adjacency):
  """Each client's new model: the mean over its influence neighbourhood (decentralized) or its
  cluster."""
  if decentralized:
    return neighbourhood_mean(trained, weights, adjacency)
  return cluster_mean(trained, weights, labels)


def warmup_average(setup: ClientSetup, carry) -> dict:
  """A warm-up round's server: the aggregate of every client, which all clients then hold."""
  state, trained, key = carry["state"], carry["trained"], carry["key"]
  start = jax.tree.map(lambda leaf: leaf[0], state.client_params)  # everyone's start
  global_params, aggregator_state = setup.aggregator.aggregate(
    trained, carry["weights"], start, state.aggregator_state,
    jax.random.fold_in(key, AGGREGATION_STREAM),
  )  # fmt: skip
  state = state.replace(
    client_params=tree_broadcast(global_params, setup.num_clients),
    trained_params=trained,
    round=state.round + 1,
    aggregator_state=aggregator_state,
  )
  return {"state": state, "metrics": carry["metrics"]}


def score_and_cluster(metrics_fn, options: PFedLIAConfig, carry) -> dict:
  """The influence round's server: score each trained model on the held-out splits, cluster
  by influence, average within clusters (or neighbourhoods)."""
  state, cohort, trained, key = carry["state"], carry["cohort"], carry["trained"], carry["key"]
  influence = influence_matrix(
    metrics_fn,
    state.client_params,
    trained,
    cohort.x,
    cohort.y,
    carry["held_out"],
    kind=options.influence,
    chunk_size=options.chunk_size,
  )
  if options.vote_epsilon > 0:
    influence = randomized_response(
      jax.random.fold_in(key, RESPONSE_STREAM), influence, options.vote_epsilon
    )
  labels, adjacency = cluster_by_influence(influence, state, options, key)
  metrics = dict(carry["metrics"])
  metrics.update(
    influence_self_mean=jnp.mean(jnp.diag(influence)),
    influence_positive_fraction=jnp.mean(influence > 0),
  )
  decentralized = options.clustering == "decentralized"
  if decentralized:
    metrics["collaborators_mean"] = jnp.mean(adjacency.sum(1))
  state = state.replace(
    client_params=personalized_mean(decentralized, trained, carry["weights"], labels, adjacency),
    trained_params=trained,
    labels=labels,
    adjacency=adjacency,
    round=state.round + 1,
  )
  return {"state": state, "metrics": metrics}


def pfedlia(setup: ClientSetup, options: PFedLIAConfig) -> Algorithm:
  """pFedLIA (module docstring).

  Args:
    setup: client training, executor, and the aggregator of the warm-up rounds.
    options: a ``PFedLIAConfig`` (phases, influence kind, clustering rule, ``finetune``).

  Returns:
    An ``Algorithm`` with per-client models and cluster labels, no global model; its round
    picks a compiled phase on the host (``host_phases``) and logs the influence phase's cost.
  """
  train_cohort = setup.cohort_trainer(None, params_axis=0, context_axis=None)
  metrics_fn = masked_metrics(setup.model.apply)
  decentralized = options.clustering == "decentralized"

  def train(carry):
    """Every cohort client trains from its model (``fit_cohort`` if a split made one)."""
    cohort = carry.get("fit_cohort", carry["cohort"])
    trained, weights, metrics = train_clients(
      train_cohort, carry["state"].client_params, cohort, carry["key"], setup.weighting
    )
    return {**carry, "trained": trained, "weights": weights, "metrics": metrics}

  def split_for_scoring(carry):
    cohort, fit_cohort, held_out = scoring_split(
      carry["cohort"], jax.random.fold_in(carry["key"], SPLIT_STREAM),
      options.validation_fraction, options.validation_split,
    )  # fmt: skip
    return {**carry, "cohort": cohort, "fit_cohort": fit_cohort, "held_out": held_out}

  def cluster_average(carry):
    state, trained = carry["state"], carry["trained"]
    state = state.replace(
      client_params=personalized_mean(
        decentralized, trained, carry["weights"], state.labels, state.adjacency
      ),
      trained_params=trained,
      round=state.round + 1,
    )
    return {"state": state, "metrics": carry["metrics"]}

  cost = influence_cost(setup.num_clients, tree_bytes(setup.params_shape))
  rounds = {
    "warmup": phases.Phases(
      phases.clients(train), phases.server(functools.partial(warmup_average, setup))
    ),
    "influence": phases.Phases(
      phases.server(split_for_scoring),
      phases.clients(train),
      phases.server(functools.partial(score_and_cluster, metrics_fn, options)),
    ),
    "personalized": phases.Phases(phases.clients(train), phases.server(cluster_average)),
  }
  compiled = {
    name: phases.for_executor(round_fn, setup.executor.jit_round)
    for name, round_fn in rounds.items()
  }

  def round_fn(state: ClusteredState, cohort, key):
    phase = phase_of(int(state.round), options)
    state, metrics = compiled[phase](state, cohort, key)
    metrics["num_clusters"] = count_clusters(state.labels)
    if phase == "influence":
      metrics.update(cost)
    return state, metrics

  privacy = functools.partial(vote_privacy, options, setup.num_clients)
  return personalized_algorithm(
    lambda key: initial_state(setup, key),
    round_fn,
    finetune=options.finetune,
    host_phases=True,
    privacy=privacy if options.vote_epsilon > 0 else None,
  )


def phase_of(round_index: int, options: PFedLIAConfig) -> str:
  """The phase round ``round_index`` runs: ``warmup``, ``influence`` or ``personalized``."""
  if round_index < options.warmup_rounds:
    return "warmup"
  if is_influence_round(round_index, options.warmup_rounds, options.recluster_every):
    return "influence"
  return "personalized"


def cluster_by_influence(influence, state: ClusteredState, options: PFedLIAConfig, key):
  """``(labels, adjacency)`` from the ``[N, N]`` influence matrix by ``options.clustering``:
  neighbourhoods (``decentralized``; labels their components), ``spectral`` or
  ``agglomerative`` clusters of the symmetrized matrix (the state's adjacency kept)."""
  if options.clustering == "decentralized":
    adjacency = neighbourhoods(influence, rule=options.neighbours, top_k=options.top_k)
    return neighbourhood_labels(adjacency), adjacency
  if options.clustering == "spectral":
    labels = spectral(
      jax.random.fold_in(key, SPECTRAL_STREAM), symmetrize(influence), options.num_clusters
    )
    return labels, state.adjacency
  labels = agglomerative(
    symmetrize(influence),
    num_clusters=options.num_clusters,
    threshold=options.threshold,
    linkage=options.linkage,
  )
  return labels, state.adjacency


def vote_privacy(options: PFedLIAConfig, num_clients: int, rounds: int) -> dict:
  """Each influence phase, a client releases one randomized-response vote per client: its own
  data's epsilon over every vote so far (PLD composition, delta ``vote_delta``)."""
  phases = sum(
    is_influence_round(r, options.warmup_rounds, options.recluster_every) for r in range(rounds)
  )
  votes = phases * num_clients
  spent = randomized_response_epsilon(votes, options.vote_epsilon, options.vote_delta)
  return {"vote_epsilon_total": spent}


ENTRY = AlgorithmEntry(
  lambda setup, options, config: pfedlia(setup, options),
  PFedLIAConfig,
  every_client_each_round=True,
)
