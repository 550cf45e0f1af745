"""FedSND as an algorithm: executors agree, self-distillation holds clients together, the
per-client teacher state, and config validation."""

import dataclasses

import chex
import jax
import numpy as np
import optax
import pytest

from fedjax_lab import run
from fedjax_lab.algorithms import ClientSetup, compiled_round
from fedjax_lab.algorithms.fedsnd import FedSNDConfig, fedsnd
from fedjax_lab.config import (
  AlgorithmConfig,
  DataConfig,
  ExperimentConfig,
  LocalConfig,
  load_config,
)
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model

SMALL = FedSNDConfig(pseudo_per_client=6, noise_steps=3, distill_steps=3)
COHORTS = [np.array([0, 2, 4]), np.array([1, 2, 5])]


def _rounds(data, options, strategy):
  setup = ClientSetup(
    build_model("mlp", 10),
    data.train_x[0, :1],
    optax.sgd(0.05),
    LocalSchedule(4, data.max_examples),
    Executor(strategy),
    data.num_clients,
  )
  algorithm = fedsnd(setup, options)
  round_fn = compiled_round(algorithm, setup.executor)
  state = algorithm.init(jax.random.key(0))
  for r, ids in enumerate(COHORTS):
    state, metrics = round_fn(state, data.cohort(ids), jax.random.key(r + 1))
  return state, metrics


@pytest.mark.parametrize("teacher", ["global", "previous"])
def test_vmap_and_loop_executors_agree(tiny_federation, teacher):
  options = dataclasses.replace(SMALL, teacher=teacher)
  vmapped, metrics = _rounds(tiny_federation, options, "vmap")
  looped, _ = _rounds(tiny_federation, options, "loop")
  chex.assert_trees_all_close(vmapped.params, looped.params, atol=1e-5)
  chex.assert_trees_all_close(vmapped.pseudo_x, looped.pseudo_x, atol=1e-4)
  assert float(metrics["server_distill_loss_after"]) < float(metrics["server_distill_loss_before"])


def test_previous_teacher_state_tracks_who_trained(tiny_federation):
  state, _ = _rounds(tiny_federation, dataclasses.replace(SMALL, teacher="previous"), "vmap")
  np.testing.assert_array_equal(state.has_previous, [True, True, True, False, True, True])
  untouched = jax.tree.map(lambda leaf: leaf[3], state.previous_params)
  assert all(float(abs(leaf).sum()) == 0 for leaf in jax.tree.leaves(untouched))
  pseudo = np.asarray(state.pseudo_x)
  fresh = np.asarray(jax.random.normal(jax.random.split(jax.random.key(0))[1], pseudo.shape))
  np.testing.assert_array_equal(pseudo[3], fresh[3])  # never sampled: untouched
  assert not np.allclose(pseudo[[0, 1, 2, 4, 5]], fresh[[0, 1, 2, 4, 5]])


def test_self_distillation_keeps_client_models_closer(tmp_path):
  """The KL to the received model pulls local training back: the trained clients' mean
  pairwise cosine similarity is higher than FedAvg's in every round."""
  base = ExperimentConfig(
    data=DataConfig(
      source="digits", num_clients=10, partition="dirichlet", alpha=0.1, min_examples=10
    ),
    local=LocalConfig(learning_rate=0.1, epochs=3, batch_size=10),
    rounds=4,
    cohort_size=5,
    eval_every=4,
    checkpoint_every=0,
  )
  cosines = {}
  for name, algorithm in {
    "fedavg": AlgorithmConfig("fedavg"),
    "self_distillation": AlgorithmConfig(
      "fedsnd", options=FedSNDConfig(self_distill_weight=2.0, noise_distill=False)
    ),
  }.items():
    config = dataclasses.replace(base, algorithm=algorithm, out_dir=str(tmp_path / name))
    cosines[name] = [row["client_cosine_similarity"] for row in run(config, progress=False).metrics]
  assert all(sd > avg for sd, avg in zip(cosines["self_distillation"], cosines["fedavg"]))


@pytest.mark.parametrize(
  "overrides, message",
  [
    (["algorithm.fedsnd.teacher=dropout"], "algorithm.fedsnd.teacher must be one of global"),
    (["algorithm.fedsnd.distill_mode=mean"], "algorithm.fedsnd.distill_mode must be one of"),
    (
      ["algorithm.fedsnd.noise_distill=false", "algorithm.fedsnd.self_distill_weight=0"],
      "algorithm.fedsnd.self_distill_weight must be > 0 when noise_distill is false",
    ),
    (["algorithm.fedsnd.temperature=0"], "algorithm.fedsnd.temperature must be > 0"),
  ],
)
def test_bad_fedsnd_config_names_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    load_config(None, overrides)
