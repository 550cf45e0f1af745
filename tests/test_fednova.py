"""FedNova (``algorithms/fednova.py``): its round is the normalized-averaging formula computed
by hand from each client's own training, it is FedAvg when every client takes as many steps,
and it is not when their steps differ."""

from __future__ import annotations

import chex
import jax
import numpy as np
import optax
import pytest

from fedjax_lab.algorithms.base import ClientSetup, round_keys
from fedjax_lab.algorithms.fednova import fednova
from fedjax_lab.algorithms.fedopt import fedopt
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model

KEY = jax.random.key(3)


def _setup(data, strategy: str, schedule: LocalSchedule) -> ClientSetup:
  return ClientSetup(
    build_model("mlp", 10, options=None),
    data.train_x[0, :1],
    optax.sgd(0.1),
    schedule,
    Executor(strategy, chunk_size=2),
    data.num_clients,
  )


@pytest.mark.parametrize("strategy", ["vmap", "chunked"])
def test_fednova_round_is_the_normalized_average(tiny_federation, strategy):
  """Epochs of batch 8 over 25, 3, 17, 9 and 25 examples: 4, 1, 3, 2, 4 steps."""
  setup = _setup(tiny_federation, strategy, LocalSchedule(8, tiny_federation.max_examples))
  cohort = tiny_federation.cohort(np.arange(5))
  algorithm = fednova(setup)
  state = algorithm.init(KEY)
  new_state, metrics = jax.jit(algorithm.round)(state, cohort, KEY)

  x = state.params
  train = setup.local_trainer()
  keys = round_keys(KEY, cohort)
  weights = np.asarray(cohort.num_examples, np.float64)
  p = weights / weights.sum()
  steps, normalized = [], []
  for k in range(5):
    y_k, result = train(x, cohort.x[k], cohort.y[k], cohort.num_examples[k], keys[k], None)
    steps.append(int(result.num_steps))
    normalized.append(jax.tree.map(lambda a, b: (a - b) / steps[-1], y_k, x))
  assert len(set(steps)) > 1
  tau_eff = float(np.dot(p, steps))
  expected = jax.tree.map(
    lambda base, *d: base + tau_eff * sum(pk * dk for pk, dk in zip(p, d)), x, *normalized
  )
  chex.assert_trees_all_close(new_state.params, expected, atol=2e-6)
  assert float(metrics["effective_steps"]) == pytest.approx(tau_eff, rel=1e-6)
  fedavg = fedopt(setup, optax.sgd(1.0))
  averaged, _ = jax.jit(fedavg.round)(fedavg.init(KEY), cohort, KEY)
  difference = max(
    float(np.abs(a - b).max())
    for a, b in zip(jax.tree.leaves(averaged.params), jax.tree.leaves(new_state.params))
  )
  assert difference > 1e-4  # unequal steps: FedAvg's update is not FedNova's


def test_with_equal_steps_fednova_is_fedavg(tiny_federation):
  setup = _setup(tiny_federation, "vmap", LocalSchedule(8, tiny_federation.max_examples, steps=3))
  cohort = tiny_federation.cohort(np.array([0, 2, 3, 5]))
  nova, avg = fednova(setup), fedopt(setup, optax.sgd(1.0))
  nova_state, nova_metrics = jax.jit(nova.round)(nova.init(KEY), cohort, KEY)
  avg_state, avg_metrics = jax.jit(avg.round)(avg.init(KEY), cohort, KEY)
  chex.assert_trees_all_close(nova_state.params, avg_state.params, atol=1e-6)
  assert float(nova_metrics["effective_steps"]) == pytest.approx(3.0)
  assert float(nova_metrics["train_loss"]) == pytest.approx(float(avg_metrics["train_loss"]))
