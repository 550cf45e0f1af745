"""FedDF: ensemble distillation for robust model fusion (Lin, Kong, Stich and Jaggi, NeurIPS
2020), a baseline of the FedSND comparison.

Each round: FedAvg's clients and weighted mean, then the server distills the mean model
towards the ensemble of the round's client models on unlabeled proxy inputs no client holds
(``data/proxy.py``):

    min_w  mean_{x in batch} T^2 KL( sum_k a_k p_T(f_k(x)) / sum_k a_k  ||  p_T(f_w(x)) )

by ``distill_steps`` Adam steps on random proxy batches, starting from the mean (``a_k`` the
aggregation weights; ``ops.distill.ensemble_distillation``). The paper stops on a validation
split; here the step count is a setting, written down with the results.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  aggregate_models,
  client_weights,
  training_metrics,
)
from fedjax_lab.checks import one_of, require
from fedjax_lab.data.proxy import PROXIES, unlabeled_images
from fedjax_lab.ops.distill import ensemble_distillation

DISTILL_STREAM = 0xDF  # fold_in constant: proxy batches


@struct.dataclass
class FedDFState:
  params: dict
  aggregator_state: Any = ()


@dataclasses.dataclass(frozen=True)
class FedDFConfig:
  """FedDF's options (``algorithm.feddf``)."""

  proxy: str = "digits"  # digits (out-of-domain images) | noise
  proxy_size: int = 500
  distill_steps: int = 50
  distill_learning_rate: float = 1e-3  # Adam, as the paper
  distill_batch_size: int = 64
  temperature: float = 1.0

  def __post_init__(self):
    p = "algorithm.feddf."
    one_of(p + "proxy", self.proxy, PROXIES)
    require(self.proxy_size >= 1, p + "proxy_size", ">= 1", self.proxy_size)
    require(self.distill_steps >= 1, p + "distill_steps", ">= 1", self.distill_steps)
    require(
      self.distill_learning_rate > 0, p + "distill_learning_rate", "> 0", self.distill_learning_rate
    )
    require(self.distill_batch_size >= 1, p + "distill_batch_size", ">= 1", self.distill_batch_size)
    require(self.temperature > 0, p + "temperature", "> 0", self.temperature)


def ensemble_distiller(apply_fn, options: FedDFConfig, proxy_x: jax.Array):
  """``distill(student, teachers [M, ...], weights [M], key) -> (student, (loss before,
  loss after))``: the server step of the module docstring; losses over the whole proxy set."""
  optimizer = optax.adam(options.distill_learning_rate)
  batch = min(options.distill_batch_size, proxy_x.shape[0])

  def distill(student, teachers, weights, key):
    teacher_logits = jax.vmap(apply_fn, in_axes=(0, None))(teachers, proxy_x)  # [M, P, C]

    def loss(params, rows):
      return ensemble_distillation(
        apply_fn(params, proxy_x[rows]), teacher_logits[:, rows], options.temperature, weights
      )

    everything = jnp.arange(proxy_x.shape[0])

    def step(index, carry):
      params, opt_state = carry
      rows = jax.random.choice(
        jax.random.fold_in(key, index), proxy_x.shape[0], (batch,), replace=False
      )
      grads = jax.grad(loss)(params, rows)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    distilled, _ = jax.lax.fori_loop(
      0, options.distill_steps, step, (student, optimizer.init(student))
    )
    return distilled, (loss(student, everything), loss(distilled, everything))

  return distill


def feddf(setup: ClientSetup, options: FedDFConfig, *, seed: int = 0) -> Algorithm:
  """FedDF (module docstring).

  Args:
    setup: client training, executor and aggregator.
    options: a ``FedDFConfig``.
    seed: draws the proxy set.

  Returns:
    An ``Algorithm`` whose state holds the global model.
  """
  train_cohort = setup.cohort_trainer(None, params_axis=None, context_axis=None)
  proxy_x = jnp.asarray(
    unlabeled_images(options.proxy, setup.sample_x.shape[1:], options.proxy_size, seed)
  )
  distill = ensemble_distiller(setup.train_apply, options, proxy_x)

  def init(key):
    return FedDFState(setup.init_params(key), setup.aggregator.init(setup.params_shape))

  def train(carry):
    trained, result = train_cohort(carry["state"].params, carry["cohort"], carry["key"], None)
    return {**carry, "trained": trained, "result": result}

  def aggregate_and_distill(carry):
    """The aggregate, then distilled towards the clients' ensemble on the proxy set (a
    ``fori_loop``: one program under every strategy)."""
    state, trained, key = carry["state"], carry["trained"], carry["key"]
    weights = client_weights(carry["cohort"], setup.weighting)
    mean, aggregator_state = aggregate_models(
      setup, trained, weights, state.params, state.aggregator_state, key
    )
    params, (before, after) = distill(
      mean, trained, weights, jax.random.fold_in(key, DISTILL_STREAM)
    )
    metrics = training_metrics(carry["result"], trained, weights)
    metrics.update(server_distill_loss_before=before, server_distill_loss_after=after)
    return {"state": FedDFState(params, aggregator_state), "metrics": metrics}

  round_fn = phases.Phases(phases.clients(train), phases.server(aggregate_and_distill))

  return Algorithm(init, round_fn, global_params=lambda state: state.params)


ENTRY = AlgorithmEntry(
  lambda setup, options, config: feddf(setup, options, seed=config.seed),
  FedDFConfig,
)
