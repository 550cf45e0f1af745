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
from fedjax_lab.data.catalog import DirichletOptions

pytestmark = pytest.mark.slow  # trains to accuracy targets (make test-fast skips it)


def _config(partition, algorithm="fedavg", alpha=0.1, server=None, rounds=30):
  return ExperimentConfig(
    data=DataConfig(
      source="digits",
      num_clients=20,
      partition=partition,
      partition_options=DirichletOptions(alpha, 10) if partition == "dirichlet" else None,
    ),
    local=LocalConfig(learning_rate=0.05, batch_size=10, epochs=1),
    algorithm=AlgorithmConfig(name=algorithm),
    server=server or ServerConfig(),
    rounds=rounds,
    cohort_size=10,
    eval_every=rounds,
    eval_finetune_epochs=1 if algorithm == "fedavg" else 0,
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


def test_local_adaptation_recovers_what_label_skew_costs_the_global_model(final):
  """FedAvg-FT: each client's copy of the global model after one local epoch, on its own
  test split, beats the global model there by far under Dirichlet(0.1)."""
  metrics = final("dirichlet")
  assert metrics["adapted_client_accuracy_mean"] > metrics["client_accuracy_mean"] + 0.1


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


def test_local_adaptation_is_each_clients_own_local_training(tiny_federation):
  """``ClientSetup.local_adaptation`` (chunked) equals the local trainer run client by client
  for the adaptation's epochs, from the same model, with each client's key."""
  from fedjax_lab.algorithms import ClientSetup
  from fedjax_lab.engine.execution import Executor
  from fedjax_lab.engine.local import LocalSchedule, cross_entropy_objective, make_local_trainer
  from fedjax_lab.models import build_model

  data = tiny_federation
  setup = ClientSetup(
    build_model("mlp", 10),
    data.train_x[0, :1],
    optax.sgd(0.1),
    LocalSchedule(4, data.max_examples, epochs=1),
    Executor("chunked", chunk_size=4),
    data.num_clients,
  )
  params = setup.init_params(jax.random.key(0))
  keys = jax.random.split(jax.random.key(3), data.num_clients)
  adapted = jax.jit(setup.local_adaptation(2))(
    params, data.train_x, data.train_y, data.train_num_examples, keys
  )
  train = jax.jit(
    make_local_trainer(
      cross_entropy_objective(setup.model.apply),
      optax.sgd(0.1),
      LocalSchedule(4, data.max_examples, epochs=2),
    )
  )
  for client in range(data.num_clients):
    expected, _ = train(
      params,
      data.train_x[client],
      data.train_y[client],
      data.train_num_examples[client],
      keys[client],
    )
    chex.assert_trees_all_close(
      jax.tree.map(lambda leaf: leaf[client], adapted), expected, atol=1e-5
    )
