"""FedGen: the generator's ops, the server step (its effect), the clients' generated-feature
term keeping labels a client lacks, executors agreeing, config validation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_lab.algorithms import ClientSetup, compiled_round
from fedjax_lab.algorithms.fedgen import (
  FedGenConfig,
  fedgen,
  generated_feature_objective,
  generator_trainer,
)
from fedjax_lab.config import load_config
from fedjax_lab.data.federated import FederatedData
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule, cross_entropy_objective, make_local_trainer
from fedjax_lab.models import build_model
from fedjax_lab.ops.generator import (
  apply_head,
  generate,
  init_generator,
  label_counts,
  label_weighted_ensemble_loss,
  sample_labels_and_noise,
)
from fedjax_lab.ops.losses import per_example_cross_entropy

pytestmark = (
  pytest.mark.slow
)  # trains whole federations to show the method's effect (make test-fast skips it)


def test_label_counts_and_the_label_weighted_ensemble_loss_match_loops():
  y = np.array([[0, 1, 1, 2], [2, 2, 0, 1]])
  counts = label_counts(jnp.asarray(y), jnp.array([3, 4]), 4)
  np.testing.assert_array_equal(counts, [[1, 2, 0, 0], [1, 1, 2, 0]])  # padding not counted
  logits = jax.random.normal(jax.random.key(0), (2, 5, 4))
  labels = jnp.array([0, 1, 2, 2, 3])
  expected = 0.0
  for k in range(2):
    for i, label in enumerate(labels):
      held = float(counts[:, label].sum())
      weight = float(counts[k, label]) / held if held else 0.0
      ce = float(per_example_cross_entropy(logits[k, i : i + 1], labels[i : i + 1])[0])
      expected += weight * ce / len(labels)
  loss = label_weighted_ensemble_loss(logits, labels, counts)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)  # label 3: held by no one, no weight


def test_sampled_labels_follow_the_distribution():
  labels, z = sample_labels_and_noise(jax.random.key(1), jnp.array([0.0, 0.25, 0.75]), 4000, 3)
  assert z.shape == (4000, 3)
  np.testing.assert_allclose(np.bincount(labels, minlength=3) / 4000, [0, 0.25, 0.75], atol=0.03)


def test_the_server_step_teaches_the_generator_what_each_label_looks_like_to_its_holders():
  """Against three fixed random heads, each holding different labels, the trained generator's
  features of a label are classified as that label by the heads that hold it (chance before)."""
  keys = jax.random.split(jax.random.key(0), 4)
  heads = {"kernel": jax.random.normal(keys[0], (3, 16, 6)), "bias": jnp.zeros((3, 6))}
  counts = jnp.array([[5, 5, 0, 0, 0, 0], [0, 0, 5, 5, 0, 0], [0, 0, 0, 0, 5, 5]], jnp.float32)
  options = FedGenConfig(noise_dim=8, generator_hidden=32, generator_steps=200)
  optimizer, train = generator_trainer(options, num_classes=6)
  generator = init_generator(keys[1], 8, 6, 32, 16)

  def holder_accuracy(params):
    labels, z = sample_labels_and_noise(keys[2], jnp.full(6, 1 / 6), 600, 8)
    logits = jax.vmap(apply_head, in_axes=(0, None))(heads, generate(params, z, labels, 6))
    holder = labels // 2
    return float((logits[holder, jnp.arange(600)].argmax(-1) == labels).mean())

  trained, _, (before, after) = jax.jit(train)(
    generator, optimizer.init(generator), heads, counts, keys[3]
  )
  assert float(after) < 0.2 * float(before)
  assert holder_accuracy(generator) < 0.4 and holder_accuracy(trained) > 0.95


def test_the_generated_term_keeps_labels_a_client_does_not_hold(digits_dataset):
  """A model trained on all ten digits, then locally on a client holding only 0-4: with the
  generated-feature term (weight 3; a generator trained against the starting model's head,
  labels uniform), its accuracy on real test digits 5-9 falls less than with plain CE after
  100 epochs (measured: 0.97 before, 0.83 with the term, 0.73 without)."""
  x, y = digits_dataset.train_x, digits_dataset.train_y
  everyone, held_out = np.arange(len(y) - 1), np.array([len(y) - 1])
  low = everyone[y[:-1] < 5][:150]
  data = FederatedData.from_indices(digits_dataset, [everyone, low], [held_out, held_out])
  model = build_model("mlp", 10)
  schedule = LocalSchedule(16, data.max_examples, epochs=5)
  pretrain = make_local_trainer(cross_entropy_objective(model.apply), optax.sgd(0.1), schedule)
  start, _ = jax.jit(pretrain)(
    model.init(jax.random.key(0), x[:1]),
    data.train_x[0],
    data.train_y[0],
    len(y),
    jax.random.key(1),
  )
  options = FedGenConfig(generator_steps=300, generated_weight=3.0)
  optimizer, train_generator = generator_trainer(options, 10)
  features_dim = model.apply_with_features(start, x[:1])[1].shape[-1]
  generator = init_generator(jax.random.key(2), options.noise_dim, 10, 256, features_dim)
  heads = jax.tree.map(lambda leaf: leaf[None], start["head"])
  generator, _, _ = jax.jit(train_generator)(
    generator, optimizer.init(generator), heads, jnp.ones((1, 10)), jax.random.key(3)
  )
  high = digits_dataset.test_y >= 5

  def high_accuracy_after_local_training(objective, stochastic, context):
    long_schedule = LocalSchedule(16, data.max_examples, epochs=100)
    local = make_local_trainer(objective, optax.sgd(0.3), long_schedule, stochastic=stochastic)
    trained, _ = jax.jit(local)(
      start, data.train_x[1], data.train_y[1], len(low), jax.random.key(4), context
    )
    logits = model.apply(trained, digits_dataset.test_x[high])
    return float((logits.argmax(-1) == digits_dataset.test_y[high]).mean())

  before = float((model.apply(start, digits_dataset.test_x[high]).argmax(-1) >= 5).mean())
  plain = high_accuracy_after_local_training(cross_entropy_objective(model.apply), False, None)
  generated = high_accuracy_after_local_training(
    generated_feature_objective(model.apply, 10, options), True, (generator, jnp.full(10, 0.1))
  )
  assert before > 0.9
  assert generated > plain + 0.05, (generated, plain)


def _rounds(data, strategy):
  setup = ClientSetup(
    build_model("mlp", 10),
    data.train_x[0, :1],
    optax.sgd(0.05),
    LocalSchedule(4, data.max_examples, epochs=2),
    Executor(strategy),
    data.num_clients,
  )
  algorithm = fedgen(setup, FedGenConfig(generator_steps=5, generator_hidden=16))
  round_fn = compiled_round(algorithm, setup.executor)
  state = algorithm.init(jax.random.key(0))
  for r, ids in enumerate([np.array([0, 2, 4]), np.array([1, 3, 5])]):
    state, metrics = round_fn(state, data.cohort(ids), jax.random.key(r + 1))
  return state, metrics


def test_vmap_and_loop_executors_agree(tiny_federation):
  vmapped, metrics = _rounds(tiny_federation, "vmap")
  looped, _ = _rounds(tiny_federation, "loop")
  chex.assert_trees_all_close(vmapped.params, looped.params, atol=1e-5)
  chex.assert_trees_all_close(vmapped.generator, looped.generator, atol=1e-4)
  assert float(metrics["generator_loss_after"]) < float(metrics["generator_loss_before"])


@pytest.mark.parametrize(
  "overrides, message",
  [
    (["algorithm.fedgen.generator_steps=0"], "algorithm.fedgen.generator_steps must be >= 1"),
    (["algorithm.fedgen.generated_weight=-1"], "algorithm.fedgen.generated_weight must be >= 0"),
    (
      ["algorithm.fedgen.generator_learning_rate=0"],
      "algorithm.fedgen.generator_learning_rate must be > 0",
    ),
  ],
)
def test_bad_fedgen_config_names_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    load_config(None, ["algorithm.name=fedgen"] + overrides)
