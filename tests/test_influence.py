"""Lazy influence: the N x N matrix against a per-pair loop, its sign, randomized response."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_lab.build import build_federation
from fedjax_lab.config import DataConfig
from fedjax_lab.engine.local import LocalSchedule, cross_entropy_objective, make_local_trainer
from fedjax_lab.models import build_model
from fedjax_lab.ops import influence
from fedjax_lab.ops.aggregate import tree_broadcast


def _score(data):
  """A shared start, each client's model after 3 local epochs on its non-held-out examples."""
  model = build_model("mlp", 10)
  start = model.init(jax.random.key(0), data.train_x[0, :1])
  schedule = LocalSchedule(4, data.max_examples, epochs=3)
  train = make_local_trainer(cross_entropy_objective(model.apply), optax.sgd(0.1), schedule)
  held_out = influence.validation_sizes(jnp.asarray(data.train_num_examples), 0.3)
  fit_x = jax.vmap(influence.drop_leading)(jnp.asarray(data.train_x), held_out)
  fit_y = jax.vmap(influence.drop_leading)(jnp.asarray(data.train_y), held_out)
  keys = jax.random.split(jax.random.key(1), data.num_clients)
  trained, _ = jax.vmap(train, in_axes=(None, 0, 0, 0, 0))(
    start, fit_x, fit_y, jnp.asarray(data.train_num_examples) - held_out, keys
  )
  starts = tree_broadcast(start, data.num_clients)
  return model, starts, trained, data, held_out


@pytest.fixture(scope="module")
def scored(tiny_federation):
  return _score(tiny_federation)


def test_validation_split_and_the_rows_left_for_training():
  sizes = influence.validation_sizes(jnp.asarray([0, 1, 2, 10, 25]), 0.2)
  np.testing.assert_array_equal(sizes, [0, 0, 1, 2, 5])
  rows = influence.drop_leading(jnp.arange(6), 2)
  np.testing.assert_array_equal(rows, [2, 3, 4, 5, 0, 1])


@pytest.mark.parametrize("kind", influence.INFLUENCE_KINDS)
def test_matrix_equals_a_per_pair_loop(scored, kind):
  model, starts, trained, data, held_out = scored
  metrics = influence.masked_metrics(model.apply)
  matrix = np.asarray(
    influence.influence_matrix(
      metrics, starts, trained, data.train_x, data.train_y, held_out, kind=kind, chunk_size=4
    )
  )
  for i in range(data.num_clients):
    row = jax.tree.map(lambda leaf: leaf[i], starts)
    base_loss, base_acc = metrics(row, data.train_x[i], data.train_y[i], held_out[i])
    for j in range(data.num_clients):
      model_j = jax.tree.map(lambda leaf: leaf[j], trained)
      loss, acc = metrics(model_j, data.train_x[i], data.train_y[i], held_out[i])
      expected = {
        "loss": base_loss - loss,
        "accuracy": acc - base_acc,
        "vote": 1.0 if base_loss - loss > 0 else -1.0,
      }[kind]
      np.testing.assert_allclose(matrix[i, j], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_self_influence_is_positive_when_training_helps():
  """Clients with a few hundred IID digits each: 3 epochs from scratch help on held-out data
  (on the tiny clients above, 2-20 training examples, they need not)."""
  data = build_federation(DataConfig(source="digits", num_clients=4, partition="iid"))
  model, starts, trained, data, held_out = _score(data)
  matrix = np.asarray(
    influence.influence_matrix(
      influence.masked_metrics(model.apply), starts, trained, data.train_x, data.train_y, held_out
    )
  )
  assert (np.diag(matrix) > 0).all() and (matrix > 0).all()


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 3.0])
def test_randomized_response_flips_at_the_stated_rate(epsilon):
  votes = jnp.where(jax.random.bernoulli(jax.random.key(0), 0.5, (300, 300)), 1.0, -1.0)
  released = influence.randomized_response(jax.random.key(1), votes, epsilon)
  assert set(np.unique(np.asarray(released))) <= {-1.0, 1.0}
  flipped = float(jnp.mean(released != votes))
  expected = 1.0 / (1.0 + np.exp(epsilon))
  assert abs(flipped - expected) < 4 * np.sqrt(expected * (1 - expected) / votes.size)


def test_cost_counts_models_and_scores():
  cost = influence.influence_cost(10, 1000)
  assert cost == {
    "influence_model_evaluations": 110,
    "influence_bytes_models": 90_000,
    "influence_bytes_scores": 400,
  }
