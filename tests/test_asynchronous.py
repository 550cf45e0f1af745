"""Asynchronous aggregation (``algorithms/asynchronous.py``, ``ops/asynchronous.py``): the ops'
formulas, the compiled FedBuff and FedAsync steps against a plain event-driven server that
handles one result at a time, and runs through the CLI path: arrivals, staleness, lost
clients, the simulated clock against synchronous FedAvg's, and resuming."""

from __future__ import annotations

import dataclasses
import heapq

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_lab.algorithms.asynchronous import asynchronous
from fedjax_lab.algorithms.base import ClientSetup, round_keys
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model
from fedjax_lab.ops.asynchronous import earliest_slots, polynomial_staleness, sequential_mixing


def test_polynomial_staleness():
  tau = jnp.array([0, 1, 3, 8])
  np.testing.assert_allclose(polynomial_staleness(tau, 0.5), [1, 2**-0.5, 0.5, 1 / 3], rtol=1e-6)
  np.testing.assert_allclose(polynomial_staleness(tau, 0.0), np.ones(4))


def test_earliest_slots_in_arrival_order_ties_by_slot():
  finish = jnp.array([3.0, -1.0, 2.0, 2.0, 0.5])
  np.testing.assert_array_equal(earliest_slots(finish, 4), [1, 4, 2, 3])


def test_sequential_mixing_is_the_mixes_applied_in_turn():
  rng = np.random.default_rng(0)
  rates = np.array([0.3, 0.0, 0.6, 0.25])
  models = rng.normal(size=(4, 5))
  x = rng.normal(size=5)
  sequential = x.copy()
  for rate, model in zip(rates, models):
    sequential = (1 - rate) * sequential + rate * model
  weights, total = sequential_mixing(jnp.asarray(rates))
  assert float(total) == pytest.approx(1 - np.prod(1 - rates))
  mixed = x + float(total) * (np.asarray(weights) @ models / float(total) - x)
  np.testing.assert_allclose(mixed, sequential, rtol=1e-5)
  assert float(weights[1]) == 0.0


def _setup(data) -> ClientSetup:
  return ClientSetup(
    build_model("mlp", 10, options=None),
    data.train_x[0, :1],
    optax.sgd(0.1),
    LocalSchedule(8, data.max_examples),
    Executor("vmap"),
    data.num_clients,
  )


def _event_driven(setup, x, cohorts, keys, concurrency, arrivals, exponent, mixing=None):
  """A plain server: results arrive one at a time from a heap ordered by (finish, slot); each
  arrival immediately sends its slot's next client the model the server holds then; FedBuff
  steps after every ``arrivals`` results, FedAsync mixes each result in on arrival (used with
  ``arrivals = 1``). Clients train one by one. Returns the model and the clock."""
  train = setup.local_trainer()
  heap = [(-1.0, slot, 0, None, 0.0) for slot in range(concurrency)]  # empty slots
  heapq.heapify(heap)
  version, clock, buffer = 0, 0.0, []
  for cohort, key in zip(cohorts, keys):
    client_keys = round_keys(key, cohort)
    for j in range(arrivals):
      finish, slot, started, result, weight = heapq.heappop(heap)
      clock = max(clock, finish)
      buffer.append((result, weight, version - started))
      if len(buffer) == arrivals and any(w > 0 for _, w, _ in buffer):
        if mixing is None:  # FedBuff: x + sum_i w_i s_i d_i / sum_i w_i
          total = sum(w for _, w, _ in buffer)
          step = [(w * (1 + tau) ** -exponent / total, d) for d, w, tau in buffer if w > 0]
          x = jax.tree.map(
            lambda p, *ds: p + sum(c * d for (c, _), d in zip(step, ds)), x, *[d for _, d in step]
          )
        else:  # FedAsync, one result: x <- (1 - b) x + b y, b = alpha s(tau)
          ((y, _, tau),) = buffer
          rate = mixing * (1 + tau) ** -exponent
          x = jax.tree.map(lambda p, m: (1 - rate) * p + rate * m, x, y)
        version += 1
      if len(buffer) == arrivals:
        buffer = []
      n = cohort.num_examples[j]
      trained, _ = train(x, cohort.x[j], cohort.y[j], n, client_keys[j], None)
      sent = trained if mixing is not None else jax.tree.map(jnp.subtract, trained, x)
      start = max(finish, 0.0)
      assert start + cohort.seconds[j] >= clock  # it arrives after this step (module docstring)
      heapq.heappush(heap, (start + float(cohort.seconds[j]), slot, version, sent, float(n)))
  return x, clock


@pytest.mark.parametrize(
  ("concurrency", "arrivals", "mixing"), [(6, 3, None), (4, 2, None), (3, 1, 0.6)]
)
def test_compiled_steps_match_an_event_driven_server(
  tiny_federation, concurrency, arrivals, mixing
):
  """Seven steps with clients of uneven speeds (results overtake each other, staleness up to
  a few versions), against ``_event_driven``: the same model (1e-5) and clock."""
  data = tiny_federation
  setup = _setup(data)
  algorithm = asynchronous(
    setup,
    optax.sgd(1.0),
    concurrency=concurrency,
    arrivals=arrivals,
    staleness_exponent=0.5,
    mixing=mixing,
  )
  rng = np.random.default_rng(1)
  cohorts, keys = [], []
  for step in range(7):
    ids = rng.choice(data.num_clients, arrivals, replace=False)
    cohort = data.cohort(ids)
    cohort = dataclasses.replace(cohort, seconds=rng.uniform(20, 60, arrivals))
    cohorts.append(cohort)
    keys.append(jax.random.fold_in(jax.random.key(5), step))
  state = algorithm.init(jax.random.key(0))
  x0 = state.params
  round_fn = jax.jit(algorithm.round)
  stalenesses = []
  for cohort, key in zip(cohorts, keys):
    state, metrics = round_fn(state, cohort, key)
    stalenesses.append(float(metrics["staleness_max"]))
  expected, clock = _event_driven(setup, x0, cohorts, keys, concurrency, arrivals, 0.5, mixing)
  chex.assert_trees_all_close(state.params, expected, atol=1e-5)
  assert float(state.clock) == pytest.approx(clock, rel=1e-6)
  assert int(state.server_version) == 7 - concurrency // arrivals  # the first fill the slots
  assert max(stalenesses) >= 1  # results really were stale
