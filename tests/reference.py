"""A plain per-client reference implementation of FedAvg, FedProx and SCAFFOLD: Python loops
over clients and steps, unpadded arrays, explicit gradient formulas. The engine must match it.
Also ``mlp_setup``, the small client setup several tests build their methods on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_lab.algorithms.base import ClientSetup
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model


def epoch_order(key, num_examples: int, max_examples: int, epoch: int) -> np.ndarray:
  """The documented batching contract: real examples sorted by uniform(fold_in(key, epoch))."""
  scores = np.array(jax.random.uniform(jax.random.fold_in(key, epoch), (max_examples,)))
  return np.argsort(scores[:num_examples], kind="stable")


def local_sgd(
  apply_fn, params, x, y, key, *, lr, momentum, batch_size, epochs, max_examples, grad_extra=None
):
  """SGD over the client's real examples. Returns (params, steps taken)."""
  n = len(y)
  if n == 0:
    return params, 0
  optimizer = optax.sgd(lr, momentum=momentum or None)
  opt_state = optimizer.init(params)

  def loss(p, bx, by):
    return optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, bx), by).mean()

  steps = 0
  per_epoch = -(-n // batch_size)
  for epoch in range(epochs):
    order = epoch_order(key, n, max_examples, epoch)
    for b in range(per_epoch):
      batch = order[b * batch_size : (b + 1) * batch_size]
      grads = jax.grad(loss)(params, x[batch], y[batch])
      if grad_extra is not None:
        grads = jax.tree.map(jnp.add, grads, grad_extra(params))
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      steps += 1
  return params, steps


def _mean(trees, weights):
  weights = np.asarray(weights, np.float64) / np.sum(weights)
  return jax.tree.map(lambda *leaves: sum(w * l for w, l in zip(weights, leaves)), *trees)


def fedavg_round(apply_fn, params, cohort, key, *, prox_mu=0.0, **local):
  keys = jax.random.split(key, len(cohort.client_ids))
  trained, weights = [], []
  for i, n in enumerate(cohort.num_examples):
    prox = (lambda p: jax.tree.map(lambda a, b: prox_mu * (a - b), p, params)) if prox_mu else None
    client, _ = local_sgd(
      apply_fn, params, cohort.x[i, :n], cohort.y[i, :n], keys[i], grad_extra=prox, **local
    )
    trained.append(client)
    weights.append(n)
  return _mean(trained, weights)


def scaffold_round(apply_fn, params, c, client_controls, cohort, key, num_clients, **local):
  keys = jax.random.split(key, len(cohort.client_ids))
  trained, new_controls, weights = [], dict(client_controls), []
  deltas = []
  for i, (cid, n) in enumerate(zip(cohort.client_ids, cohort.num_examples)):
    ci = client_controls[int(cid)]
    correction = jax.tree.map(jnp.subtract, c, ci)
    y, steps = local_sgd(
      apply_fn,
      params,
      cohort.x[i, :n],
      cohort.y[i, :n],
      keys[i],
      grad_extra=lambda p: correction,
      **local,
    )
    ci_new = (
      jax.tree.map(lambda a, b, x0, yk: a - b + (x0 - yk) / (steps * local["lr"]), ci, c, params, y)
      if steps
      else ci
    )
    deltas.append(jax.tree.map(jnp.subtract, ci_new, ci))
    new_controls[int(cid)] = ci_new
    trained.append(y)
    weights.append(n)
  new_params = _mean(trained, weights)
  mean_delta = _mean(deltas, np.ones(len(deltas)))
  c = jax.tree.map(lambda a, d: a + len(deltas) / num_clients * d, c, mean_delta)
  return new_params, c, new_controls


def mlp_setup(data, **fields):
  """A ``ClientSetup`` training the MLP on ``data`` with SGD 0.1, batches of 8, one epoch,
  vmapped; ``fields`` replace any of its other fields (an aggregator, an executor)."""
  defaults = dict(executor=Executor("vmap"), optimizer=optax.sgd(0.1))
  return ClientSetup(
    model=build_model("mlp", 10, options=None),
    sample_x=data.train_x[0, :1],
    schedule=LocalSchedule(8, data.max_examples),
    num_clients=data.num_clients,
    **{**defaults, **fields},
  )
