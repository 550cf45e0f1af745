"""Algorithms show their effect on real offline data (scikit-learn digits, MLP)."""

import chex
import jax
import numpy as np
import optax
import pytest

from fedjax_lab import run
from fedjax_lab.config import (
  AlgorithmConfig,
  DataConfig,
  ExperimentConfig,
  LocalConfig,
  ServerConfig,
)


def _config(partition, algorithm="fedavg", alpha=0.1, server=None, rounds=30):
  return ExperimentConfig(
    data=DataConfig(
      source="digits", num_clients=20, partition=partition, alpha=alpha, min_examples=10
    ),
    local=LocalConfig(learning_rate=0.05, batch_size=10, epochs=1),
    algorithm=AlgorithmConfig(name=algorithm),
    server=server or ServerConfig(),
    rounds=rounds,
    cohort_size=10,
    eval_every=rounds,
    checkpoint_every=0,
  )


@pytest.fixture(scope="module")
def final(tmp_path_factory):
  cache = {}

  def get(partition, algorithm="fedavg", **kwargs):
    key = (partition, algorithm, tuple(sorted(kwargs.items())))
    if key not in cache:
      config = _config(partition, algorithm, **kwargs)
      out_dir = tmp_path_factory.mktemp("run")
      import dataclasses

      cache[key] = run(dataclasses.replace(config, out_dir=str(out_dir)), progress=False).metrics[
        -1
      ]
    return cache[key]

  return get


def test_fedavg_learns_under_label_skew_but_loses_to_iid(final):
  iid, skewed = final("iid")["global_accuracy"], final("dirichlet")["global_accuracy"]
  assert skewed > 0.4, "FedAvg should learn well above chance (0.1) at alpha=0.1"
  assert iid > 0.85
  assert iid - skewed > 0.1, "the non-IID gap should show"


def test_scaffold_closes_part_of_the_non_iid_gap(final):
  assert (
    final("dirichlet", "scaffold")["global_accuracy"] > final("dirichlet")["global_accuracy"] + 0.05
  )


def test_local_only_wins_on_skewed_clients_and_loses_on_iid(final):
  assert (
    final("dirichlet", "local")["client_accuracy_mean"] > final("dirichlet")["client_accuracy_mean"]
  )
  assert final("iid", "local")["client_accuracy_mean"] < final("iid")["client_accuracy_mean"]


def test_centralized_is_the_upper_reference(final):
  assert (
    final("dirichlet", "centralized")["global_accuracy"] > final("dirichlet")["global_accuracy"]
  )


def test_fedadam_learns(final):
  metrics = final("dirichlet", "fedopt", server=ServerConfig(optimizer="adam", learning_rate=0.01))
  assert metrics["global_accuracy"] > 0.4


def test_server_learning_rate_scales_the_pseudo_gradient(tiny_federation):
  """FedOpt with sgd(eta): x + eta * (mean - x), against FedAvg's mean on the same cohort."""
  from fedjax_lab.algorithms import ClientSetup
  from fedjax_lab.algorithms.fedopt import fedopt
  from fedjax_lab.engine.execution import Executor
  from fedjax_lab.engine.local import LocalSchedule
  from fedjax_lab.models import build_model

  setup = ClientSetup(
    build_model("mlp", 10),
    tiny_federation.train_x[0, :1],
    optax.sgd(0.1),
    LocalSchedule(4, tiny_federation.max_examples),
    Executor("vmap"),
    tiny_federation.num_clients,
  )
  cohort, key = tiny_federation.cohort(np.array([0, 2, 4])), jax.random.key(1)
  averaged, _ = fedopt(setup, optax.sgd(1.0)).round(
    fedopt(setup, optax.sgd(1.0)).init(jax.random.key(0)), cohort, key
  )
  half = fedopt(setup, optax.sgd(0.5))
  start = half.init(jax.random.key(0))
  stepped, _ = half.round(start, cohort, key)
  expected = jax.tree.map(lambda x, m: x + 0.5 * (m - x), start.params, averaged.params)
  chex.assert_trees_all_close(stepped.params, expected, atol=1e-6)
