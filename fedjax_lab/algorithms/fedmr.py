"""FedMR: federated learning by layer-wise model recombination (Hu et al., KDD 2024).

The server keeps ``m`` model slots (``m`` = cohort size). Each round the ``i``-th sampled
client trains slot ``i`` (slots are not tied to clients) with a fresh optimizer; the global
model is the unweighted slot mean (evaluation only); then, from round ``first_stage_rounds``
on, the slots are recombined unit by unit (``ops.recombine``); before it, every slot is reset
to the mean (unweighted FedAvg, the two-stage scheme). ``client_cosine_similarity`` is the mean
pairwise cosine similarity of the trained slots (the paper's weight-divergence plot; FedAvg,
FedProx and SCAFFOLD log the same for their trained client models).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_lab.algorithms.base import Algorithm, ClientSetup, client_weights, round_keys
from fedjax_lab.ops.aggregate import tree_broadcast, weighted_mean
from fedjax_lab.ops.communication import tree_bytes
from fedjax_lab.ops.divergence import mean_pairwise_cosine
from fedjax_lab.ops.recombine import recombination_units, recombine


RECOMBINE_STREAM = 0x5EC0  # fold_in constant: the recombination key, apart from training keys


@struct.dataclass
class FedMRState:
  slots: dict                  # [m, ...]
  round: jax.Array             # rounds completed


def fedmr(setup: ClientSetup, num_slots: int, *, first_stage_rounds: int = 0,
          granularity: str = "leaf", block_fraction: float = 0.0) -> Algorithm:
  train_slots = setup.cohort_trainer(None, params_axis=0, context_axis=None)
  one_model = jax.eval_shape(setup.init_params, jax.random.key(0))
  units = recombination_units(one_model, setup.model.layer_groups(one_model), granularity,
                              block_fraction)

  def init(key):
    return FedMRState(tree_broadcast(setup.init_params(key), num_slots), jnp.zeros((), jnp.int32))

  def round_fn(state, cohort, key):
    trained, result = train_slots(state.slots, cohort.x, cohort.y, cohort.num_examples,
                                  round_keys(key, cohort), None)
    mean = weighted_mean(trained, jnp.ones(num_slots))
    slots = jax.lax.cond(state.round < first_stage_rounds,
                         lambda: tree_broadcast(mean, num_slots),
                         lambda: recombine(jax.random.fold_in(key, RECOMBINE_STREAM), trained,
                                           units))
    metrics = {"train_loss": weighted_mean(result.mean_loss, client_weights(cohort,
                                                                            "num_examples")),
               "client_cosine_similarity": mean_pairwise_cosine(trained)}
    return FedMRState(slots, state.round + 1), metrics

  model_bytes = tree_bytes(one_model)
  return Algorithm(init, round_fn,
                   global_params=lambda state: weighted_mean(state.slots, jnp.ones(num_slots)),
                   personal_params=None, bytes_down=model_bytes, bytes_up=model_bytes,
                   jit_round=setup.executor.jit_round)
