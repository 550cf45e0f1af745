"""Asynchronous aggregation (``algorithms/asynchronous.py``, ``ops/asynchronous.py``): the ops'
formulas, the compiled FedBuff and FedAsync steps against a plain event-driven server that
handles one result at a time, and runs through the CLI path: arrivals, staleness, lost
clients, the simulated clock against synchronous FedAvg's, and resuming."""

from __future__ import annotations

import dataclasses
import heapq
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import mlp_setup

from fedjax_lab.algorithms.asynchronous import asynchronous
from fedjax_lab.algorithms.base import round_keys
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
  setup = mlp_setup(data)
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


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    ([], "systems.compute_median must be > 0 for algorithm.name=fedbuff"),
    (["algorithm.fedbuff.concurrency=12", "systems.compute_median=20"],
     "algorithm.fedbuff.concurrency must be a multiple of cohort_size=5"),
    (["systems.compute_median=20", "systems.over_selection=0.5"],
     "systems.over_selection must be 0 for algorithm.name=fedbuff"),
    (["systems.compute_median=20", "privacy.noise_multiplier=1", "aggregation.clip_norm=1",
      "algorithm.weighting=uniform"], "privacy.noise_multiplier must be 0 for algorithm.name"),
    (["algorithm.name=fedasync", "algorithm.fedasync.alpha=0", "systems.compute_median=20"],
     "algorithm.fedasync.alpha must be in (0, 1]"),
    # More clients in flight than the federation has (the default 100 slots for 10 clients).
    (["systems.compute_median=20"],
     "algorithm.fedbuff.concurrency must be <= data.num_clients=10 (a client is in flight"),
    (["algorithm.name=fedasync", "algorithm.fedasync.concurrency=50", "systems.compute_median=20"],
     "algorithm.fedasync.concurrency must be <= data.num_clients=10"),
  ],
)  # fmt: skip
def test_settings_asynchronous_methods_cannot_honour_are_refused_in_one_line(overrides, message):
  from fedjax_lab.config import load_config

  with pytest.raises(ValueError, match=re.escape(message)):
    load_config(
      None, ["data.num_clients=10", "cohort_size=5", "algorithm.name=fedbuff", *overrides]
    )


TIMED = [
  "data.source=digits",
  "data.num_clients=20",
  "data.dirichlet.min_examples=10",
  "cohort_size=5",
  "eval_every=4",
  "checkpoint_every=4",
  "local.batch_size=16",
  "systems.compute_median=20",
  "systems.compute_sigma=1.5",
  "systems.uplink_mbps=1",
  "systems.downlink_mbps=10",
]


@pytest.mark.slow
def test_fedbuff_runs_ahead_of_the_stragglers_and_resumes_exactly(tmp_path):
  """On the same heavy-tailed devices FedBuff (K = 5 of 15 in flight) takes its server steps
  several times faster in simulated time than synchronous FedAvg takes its rounds; dropped
  clients bring nothing (fewer arrivals); 8 rounds equal 4 + 4 resumed."""
  from fedjax_lab.config import load_config
  from fedjax_lab.runner import run

  fedbuff = [*TIMED, "algorithm.name=fedbuff", "algorithm.fedbuff.concurrency=15",
             "systems.dropout=0.3"]  # fmt: skip
  rows = run(load_config(None, [*fedbuff, "rounds=8", f"out_dir={tmp_path / 'a'}"]),
             progress=False).metrics  # fmt: skip
  assert [r["server_steps"] for r in rows] == [0, 0, 0, 1, 2, 3, 4, 5]  # 3 rounds fill 15 slots
  clock = [r["simulated_seconds"] for r in rows]
  assert clock == sorted(clock) and clock[-1] > 0
  assert all(r["arrivals"] <= 5 for r in rows) and sum(r["arrivals"] for r in rows[3:]) < 25
  assert sum(r["clients_dropped"] for r in rows) > 0
  assert max(r["staleness_max"] for r in rows) >= 1
  fedavg = run(load_config(None, [*TIMED, "rounds=5", f"out_dir={tmp_path / 'f'}"]),
               progress=False).metrics  # fmt: skip
  per_step = (clock[-1] - clock[2]) / 5
  per_round = fedavg[-1]["simulated_seconds"] / 5
  assert per_step < per_round / 2

  run(load_config(None, [*fedbuff, "rounds=4", f"out_dir={tmp_path / 'b'}"]), progress=False)
  resumed = run(load_config(None, [*fedbuff, "rounds=8", f"out_dir={tmp_path / 'b'}"]),
                resume=True, progress=False).metrics  # fmt: skip
  for row, again in zip(rows, resumed):
    for key in ("simulated_seconds", "server_steps", "staleness_mean", "train_loss"):
      assert again[key] == pytest.approx(row[key], rel=1e-6), key
  assert resumed[-1]["global_accuracy"] == pytest.approx(rows[-1]["global_accuracy"])
