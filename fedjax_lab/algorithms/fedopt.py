"""FedOpt (Reddi et al. 2021), with FedAvg, FedAvgM and FedProx as settings of it.

Round: every cohort member trains the global model ``x`` locally to ``y_k``; the server takes
the pseudo-gradient ``g = x - sum_k w_k y_k / sum_k w_k`` and applies any optax transformation:
``x <- x + server_optimizer.update(g)``. FedAvg (McMahan et al. 2017) is ``optax.sgd(1.0)``,
FedAvgM is SGD with momentum, FedAdam / FedYogi are ``optax.adam`` / ``optax.yogi``.
FedProx (Li et al. 2020) adds ``mu / 2 * ||y - x||^2`` to each local loss.

The cohort is reduced with ``Executor.map_sum``: each client contributes ``(w_k y_k, w_k,
w_k loss_k, y_k / ||y_k||)`` and only the sums are kept, so with micro-cohorts (``chunked``) or
the per-client ``loop`` peak memory does not grow with the cohort.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fedjax_lab.algorithms.base import Algorithm, ClientSetup, client_weight, round_keys
from fedjax_lab.ops.communication import tree_bytes
from fedjax_lab.ops.divergence import mean_pairwise_cosine_from_sum, unit_vector


@struct.dataclass
class FedOptState:
  params: dict
  server_opt_state: optax.OptState


def proximal_term(mu: float):
  """``mu / 2 * ||params - anchor||^2`` with ``context = anchor`` (FedProx)."""
  def regularizer(params, anchor):
    squares = jax.tree.map(lambda p, a: jnp.sum((p - jax.lax.stop_gradient(a)) ** 2),
                           params, anchor)
    return 0.5 * mu * sum(jax.tree.leaves(squares))
  return regularizer


def fedopt(setup: ClientSetup, server_optimizer: optax.GradientTransformation, *,
           prox_mu: float = 0.0, weighting: str = "num_examples") -> Algorithm:
  train = setup.local_trainer(proximal_term(prox_mu) if prox_mu > 0 else None)

  def contribution(params, x, y, num_examples, key):
    trained, result = train(params, x, y, num_examples, key, params)
    weight = client_weight(num_examples, weighting)
    return (jax.tree.map(lambda leaf: weight * leaf, trained), weight,
            weight * result.mean_loss, unit_vector(trained))

  cohort_sums = setup.executor.map_sum(contribution, (None, 0, 0, 0, 0))

  def init(key):
    params = setup.init_params(key)
    return FedOptState(params, server_optimizer.init(params))

  def round_fn(state, cohort, key):
    weighted_params, total_weight, weighted_loss, unit_sum = cohort_sums(
        state.params, cohort.x, cohort.y, cohort.num_examples, round_keys(key, cohort))
    total_weight = jnp.maximum(total_weight, jnp.finfo(jnp.float32).tiny)
    pseudo_gradient = jax.tree.map(lambda p, s: p - s / total_weight, state.params,
                                   weighted_params)
    updates, opt_state = server_optimizer.update(pseudo_gradient, state.server_opt_state,
                                                 state.params)
    metrics = {"train_loss": weighted_loss / total_weight,
               "client_cosine_similarity": mean_pairwise_cosine_from_sum(
                   unit_sum, cohort.client_ids.shape[0])}
    return FedOptState(optax.apply_updates(state.params, updates), opt_state), metrics

  model_bytes = tree_bytes(jax.eval_shape(setup.init_params, jax.random.key(0)))
  return Algorithm(init, round_fn, global_params=lambda state: state.params,
                   personal_params=None, bytes_down=model_bytes, bytes_up=model_bytes,
                   jit_round=setup.executor.jit_round)
