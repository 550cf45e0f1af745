import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_lab.engine.local import (
  LocalSchedule,
  batch_indices,
  cross_entropy_objective,
  epoch_orders,
  make_local_trainer,
)
from fedjax_lab.models import build_model


@pytest.mark.parametrize("num_examples,batch_size", [(10, 3), (9, 3), (1, 4), (7, 7)])
def test_each_epoch_visits_every_real_example_once(num_examples, batch_size):
  schedule = LocalSchedule(batch_size, max_examples=12, epochs=2)
  key = jax.random.key(0)
  per_epoch = int(schedule.batches_per_epoch(num_examples))
  orders = epoch_orders(key, num_examples, schedule)
  for epoch in range(2):
    seen = []
    for b in range(per_epoch):
      indices, mask = batch_indices(orders, num_examples, epoch * per_epoch + b, schedule)
      seen.extend(np.asarray(indices)[np.asarray(mask)].tolist())
    assert sorted(seen) == list(range(num_examples))


def test_client_steps_follow_true_counts():
  schedule = LocalSchedule(batch_size=5, max_examples=23, epochs=3)
  np.testing.assert_array_equal(
    schedule.client_steps(jnp.array([0, 1, 5, 6, 23])), [0, 3, 3, 6, 15]
  )
  assert schedule.max_steps == 15
  fixed = LocalSchedule(batch_size=5, max_examples=23, steps=4)
  np.testing.assert_array_equal(fixed.client_steps(jnp.array([0, 1, 23])), [0, 4, 4])


@pytest.fixture(scope="module")
def mlp_trainer():
  model = build_model("mlp", 3)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4)))
  schedule = LocalSchedule(batch_size=2, max_examples=8, epochs=2)
  train = make_local_trainer(cross_entropy_objective(model.apply), optax.sgd(0.1), schedule)
  return model, params, jax.jit(train)


def test_padding_and_padded_steps_do_not_move_parameters(mlp_trainer):
  _, params, train = mlp_trainer
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)
  key = jax.random.key(3)
  # Same 3 real examples, different padding content: identical result.
  garbage_x, garbage_y = x.copy(), y.copy()
  garbage_x[3:] = 1e3
  garbage_y[3:] = 2
  clean_x, clean_y = x.copy(), y.copy()
  clean_x[3:], clean_y[3:] = 0, 0
  a, result = train(params, clean_x, clean_y, 3, key)
  b, _ = train(params, garbage_x, garbage_y, 3, key)
  chex.assert_trees_all_close(a, b)
  assert int(result.num_steps) == 4  # 2 epochs x ceil(3 / 2)
  empty, empty_result = train(params, clean_x, clean_y, 0, key)
  chex.assert_trees_all_equal(empty, params)
  assert int(empty_result.num_steps) == 0


def test_training_lowers_the_loss(mlp_trainer):
  model, params, train = mlp_trainer
  rng = np.random.default_rng(1)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
  trained = params
  for i in range(5):
    trained, _ = train(trained, x, y, 8, jax.random.key(i))
  assert loss(trained) < 0.7 * loss(params)


def test_steps_mode_draws_only_the_epochs_the_smallest_client_can_start():
  """``min_examples`` bounds the epoch orders drawn in ``steps`` mode, and training is the
  same as with every order drawn."""
  assert LocalSchedule(20, 200, steps=10).max_epochs == 10
  assert LocalSchedule(20, 200, steps=10, min_examples=200).max_epochs == 1
  assert LocalSchedule(20, 200, steps=10, min_examples=45).max_epochs == 4  # 3 batches an epoch
  assert LocalSchedule(20, 200, epochs=3, min_examples=45).max_epochs == 3
  model = build_model("mlp", 10)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((60, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 60), jnp.int32)
  params = model.init(jax.random.key(0), x[:1])
  trained = []
  for min_examples in (1, 45):
    schedule = LocalSchedule(20, 60, steps=7, min_examples=min_examples)
    train = make_local_trainer(cross_entropy_objective(model.apply), optax.sgd(0.1), schedule)
    trained.append(jax.jit(train)(params, x, y, jnp.asarray(45), jax.random.key(3))[0])
  chex.assert_trees_all_equal(*trained)


def test_a_step_limit_keeps_the_first_steps(mlp_trainer):
  """Partial work: two epochs cut after the first epoch's batches equal one epoch (each
  epoch's order is drawn from its own key), and the result counts the steps taken."""
  model, params, _ = mlp_trainer
  objective, sgd = cross_entropy_objective(model.apply), optax.sgd(0.1)
  two_epochs = jax.jit(make_local_trainer(objective, sgd, LocalSchedule(2, 8, epochs=2)))
  one_epoch = jax.jit(make_local_trainer(objective, sgd, LocalSchedule(2, 8, epochs=1)))
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)
  key = jax.random.key(4)
  cut, result = two_epochs(params, x, y, 7, key, None, 4)
  whole, _ = one_epoch(params, x, y, 7, key)
  chex.assert_trees_all_close(cut, whole, atol=1e-6)
  assert int(result.num_steps) == 4
  _, full = two_epochs(params, x, y, 7, key, None, 100)
  assert int(full.num_steps) == 8
  assert not np.allclose(
    jax.tree.leaves(cut)[0], jax.tree.leaves(two_epochs(params, x, y, 7, key)[0])[0]
  )
