"""FedMR: federated learning by layer-wise model recombination (Hu et al., KDD 2024).

The server keeps ``m`` model slots (``m`` = cohort size). Each round the ``i``-th sampled
client trains slot ``i`` (slots are not tied to clients) with a fresh optimizer; the global
model is the unweighted slot mean (evaluation only); then, from round ``first_stage_rounds``
on, the slots are recombined unit by unit (``ops.recombine``); before it, every slot is reset
to the aggregate (the setup's aggregator with equal weights, by default the unweighted mean:
FedAvg, the two-stage scheme). ``client_cosine_similarity`` is the mean
pairwise cosine similarity of the trained slots (the paper's weight-divergence plot; FedAvg,
FedProx and SCAFFOLD log the same for their trained client models).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  AGGREGATION_STREAM,
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  client_weights,
)
from fedjax_lab.checks import one_of, require
from fedjax_lab.ops.aggregate import tree_broadcast, weighted_mean
from fedjax_lab.ops.divergence import mean_pairwise_cosine
from fedjax_lab.ops.recombine import GRANULARITIES, recombination_units, recombine

RECOMBINE_STREAM = 0x5EC0  # fold_in constant: the recombination key, apart from training keys


@struct.dataclass
class FedMRState:
  slots: dict  # [m, ...]
  round: jax.Array  # rounds completed
  aggregator_state: Any = ()


def fedmr(
  setup: ClientSetup,
  num_slots: int,
  *,
  first_stage_rounds: int = 0,
  granularity: str = "leaf",
  block_fraction: float = 0.0,
) -> Algorithm:
  """FedMR (module docstring).

  Args:
    setup: client training, executor and aggregator (used in the first stage).
    num_slots: ``m``, the number of model slots: the cohort size.
    first_stage_rounds: rounds of aggregation (FedAvg) before recombination starts.
    granularity: the recombination unit, ``leaf``, ``layer`` or ``block`` (``ops.recombine``).
    block_fraction: with ``block``, leaves per block ``= ceil(block_fraction * leaves)``.

  Returns:
    An ``Algorithm`` whose state holds the ``m`` slots; the global model is their mean.
  """
  train_slots = setup.cohort_trainer(None, params_axis=0, context_axis=None)
  one_model = setup.params_shape
  units = recombination_units(one_model, setup.layer_groups, granularity, block_fraction)

  def init(key):
    return FedMRState(
      tree_broadcast(setup.init_params(key), num_slots),
      jnp.zeros((), jnp.int32),
      setup.aggregator.init(one_model),
    )

  def train(carry):
    trained, result = train_slots(carry["state"].slots, carry["cohort"], carry["key"], None)
    return {**carry, "trained": trained, "losses": result.mean_loss}

  def aggregate_or_recombine(carry):
    """FedAvg's mean in every slot during the first stage, then the recombined models (a
    ``lax.cond`` in a server phase: one program under every strategy, only the taken branch
    runs)."""
    state, trained, key = carry["state"], carry["trained"], carry["key"]
    mean, aggregator_state = setup.aggregator.aggregate(
      trained,
      jnp.ones(num_slots),
      None,
      state.aggregator_state,
      jax.random.fold_in(key, AGGREGATION_STREAM),
    )
    slots = jax.lax.cond(
      state.round < first_stage_rounds,
      lambda: tree_broadcast(mean, num_slots),
      lambda: recombine(jax.random.fold_in(key, RECOMBINE_STREAM), trained, units),
    )
    weights = client_weights(carry["cohort"], "num_examples")
    metrics = {
      "train_loss": weighted_mean(carry["losses"], weights),
      "client_cosine_similarity": mean_pairwise_cosine(trained),
    }
    return {"state": FedMRState(slots, state.round + 1, aggregator_state), "metrics": metrics}

  round_fn = phases.Phases(phases.clients(train), phases.server(aggregate_or_recombine))

  return Algorithm(
    init, round_fn, global_params=lambda state: weighted_mean(state.slots, jnp.ones(num_slots))
  )


@dataclasses.dataclass(frozen=True)
class FedMRConfig:
  """FedMR's options (``algorithm.fedmr``); the slot count is ``cohort_size``."""

  first_stage_rounds: int = 0  # rounds of unweighted FedAvg before recombination starts
  granularity: str = "leaf"  # leaf (official code) | layer (paper) | block (ablation)
  block_fraction: float = 0.0  # FedMR_Partition(p): leaves per block = ceil(p * leaves)

  def __post_init__(self):
    require(
      self.first_stage_rounds >= 0,
      "algorithm.fedmr.first_stage_rounds",
      ">= 0",
      self.first_stage_rounds,
    )
    one_of("algorithm.fedmr.granularity", self.granularity, GRANULARITIES)
    require(
      0 <= self.block_fraction <= 1,
      "algorithm.fedmr.block_fraction",
      "in [0, 1]",
      self.block_fraction,
    )


ENTRY = AlgorithmEntry(
  lambda setup, options, config: fedmr(
    setup,
    config.cohort_size,
    first_stage_rounds=options.first_stage_rounds,
    granularity=options.granularity,
    block_fraction=options.block_fraction,
  ),
  FedMRConfig,
)
