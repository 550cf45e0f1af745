import dataclasses

import chex
import jax
import numpy as np
import optax
import pytest

from fedjax_lab import run
from fedjax_lab.algorithms import ClientSetup
from fedjax_lab.algorithms.fedmr import FedMRConfig, fedmr
from fedjax_lab.algorithms.fedopt import fedopt
from fedjax_lab.config import AlgorithmConfig, DataConfig, ExperimentConfig, LocalConfig
from fedjax_lab.data.catalog import DirichletOptions
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model

COHORTS = [np.array([0, 1, 2, 3]), np.array([5, 3, 4, 1]), np.array([0, 2, 4, 5])]


def _setup(data):
  return ClientSetup(
    build_model("mlp", 10),
    data.train_x[0, :1],
    optax.sgd(0.05, momentum=0.5),
    LocalSchedule(4, data.max_examples, epochs=1),
    Executor("vmap"),
    data.num_clients,
  )


def _run(algorithm, data):
  state = algorithm.init(jax.random.key(0))
  step = jax.jit(algorithm.round)
  for r, ids in enumerate(COHORTS):
    state, metrics = step(state, data.cohort(ids), jax.random.key(10 + r))
  return state, metrics


def test_first_stage_everywhere_is_unweighted_fedavg(tiny_federation):
  setup = _setup(tiny_federation)
  mr_state, mr_metrics = _run(fedmr(setup, 4, first_stage_rounds=len(COHORTS)), tiny_federation)
  avg = fedopt(dataclasses.replace(setup, weighting="uniform"), optax.sgd(1.0))
  avg_state, _ = _run(avg, tiny_federation)
  algorithm = fedmr(setup, 4, first_stage_rounds=len(COHORTS))
  chex.assert_trees_all_close(algorithm.global_params(mr_state), avg_state.params, atol=1e-5)
  for slot in range(4):  # after a first-stage round every slot is the mean
    chex.assert_trees_all_close(
      jax.tree.map(lambda l: l[slot], mr_state.slots), avg_state.params, atol=1e-5
    )


def test_recombination_mixes_slots_and_keeps_their_mean(tiny_federation):
  setup = _setup(tiny_federation)
  algorithm = fedmr(setup, 4, granularity="layer")
  state = algorithm.init(jax.random.key(0))
  cohort = tiny_federation.cohort(COHORTS[0])
  trained, _ = setup.cohort_trainer(None, 0, None)(state.slots, cohort, jax.random.key(10))
  new_state, metrics = jax.jit(algorithm.round)(state, cohort, jax.random.key(10))
  chex.assert_trees_all_close(
    algorithm.global_params(new_state), jax.tree.map(lambda l: l.mean(0), trained), atol=1e-6
  )
  # each new slot's layers come whole from trained slots, and not all from the same one
  sources = {}
  for layer in new_state.slots:
    new, old = new_state.slots[layer]["kernel"], trained[layer]["kernel"]
    sources[layer] = [
      int(np.argmin([np.abs(new[i] - old[j]).max() for j in range(4)])) for i in range(4)
    ]
    for i, j in enumerate(sources[layer]):
      chex.assert_trees_all_close(
        jax.tree.map(lambda l: l[i], new_state.slots[layer]),
        jax.tree.map(lambda l: l[j], trained[layer]),
      )
  assert len({tuple(v) for v in sources.values()}) > 1
  assert 0.0 < float(metrics["client_cosine_similarity"]) < 1.0


@pytest.mark.slow
def test_fedmr_learns_non_iid_digits_through_the_runner(tmp_path):
  config = ExperimentConfig(
    data=DataConfig(
      source="digits",
      num_clients=20,
      partition="dirichlet",
      partition_options=DirichletOptions(alpha=0.5, min_examples=10),
    ),
    local=LocalConfig(learning_rate=0.05, momentum=0.5, batch_size=10, epochs=2),
    algorithm=AlgorithmConfig("fedmr", options=FedMRConfig(first_stage_rounds=5)),
    rounds=30,
    cohort_size=10,
    eval_every=10,
    checkpoint_every=0,
    out_dir=str(tmp_path),
  )
  metrics = run(config, progress=False).metrics
  assert metrics[-1]["global_accuracy"] > 0.7
  first_stage = [m["client_cosine_similarity"] for m in metrics[:5]]
  recombining = [m["client_cosine_similarity"] for m in metrics[-5:]]
  # trained slots start from one model in the first stage; recombined slots drift apart
  assert np.mean(recombining) < np.mean(first_stage)
