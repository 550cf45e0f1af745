"""Distillation losses, pseudo-sample refinement and FedSND's server step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_lab.algorithms import ClientSetup, phases
from fedjax_lab.algorithms.fedsnd import FedSNDConfig, noise_distillation
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model
from fedjax_lab.ops import distill, pseudo_samples

pytestmark = (
  pytest.mark.slow
)  # trains whole federations to show the method's effect (make test-fast skips it)


def test_kl_on_a_hand_computed_case():
  student, teacher = jnp.array([[0.0, 0.0]]), jnp.array([[np.log(3.0), 0.0]])
  # T = 1: p = (3/4, 1/4), q = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2)
  np.testing.assert_allclose(distill.kl_distillation(student, teacher, 1.0), 0.1308121, rtol=1e-5)
  # T = 2: p = (sqrt3, 1) / (1 + sqrt3); the loss carries T^2 = 4
  p = np.array([np.sqrt(3.0), 1.0]) / (1 + np.sqrt(3.0))
  expected = 4 * (p * np.log(p / 0.5)).sum()
  np.testing.assert_allclose(distill.kl_distillation(student, teacher, 2.0), expected, rtol=1e-5)


def test_zero_when_teacher_is_student_and_mask_drops_examples():
  logits = jax.random.normal(jax.random.key(0), (6, 5))
  assert abs(float(distill.kl_distillation(logits, logits, 3.0))) < 1e-6
  other = jax.random.normal(jax.random.key(1), (6, 5))
  mask = jnp.array([1, 1, 1, 0, 0, 0])
  np.testing.assert_allclose(
    distill.kl_distillation(logits, other, 2.0, mask),
    distill.kl_distillation(logits[:3], other[:3], 2.0),
    rtol=1e-6,
  )


def test_gradient_pulls_the_student_towards_the_teacher():
  """d/dz T^2 KL(p || softmax(z/T)) = T (softmax(z/T) - p): descent moves q towards p."""
  student = jax.random.normal(jax.random.key(2), (4, 7))
  teacher = jax.random.normal(jax.random.key(3), (4, 7))
  temperature = 2.5
  grads = jax.grad(lambda z: distill.kl_distillation(z, teacher, temperature))(student)
  p = jax.nn.softmax(teacher / temperature)
  q = jax.nn.softmax(student / temperature)
  np.testing.assert_allclose(grads, temperature * (q - p) / 4, rtol=1e-4, atol=1e-6)
  after = distill.kl_distillation(student - 0.5 * grads, teacher, temperature)
  assert after < distill.kl_distillation(student, teacher, temperature)


def test_ensemble_teacher_is_the_mean_distribution():
  teachers = jax.random.normal(jax.random.key(4), (3, 5, 4))
  student = jax.random.normal(jax.random.key(5), (5, 4))
  probs = jax.nn.softmax(teachers / 2.0).mean(0)
  expected = 4.0 * (probs * (jnp.log(probs) - jax.nn.log_softmax(student / 2.0))).sum(-1).mean()
  np.testing.assert_allclose(
    distill.ensemble_distillation(student, teachers, 2.0), expected, rtol=1e-5
  )
  same = jnp.broadcast_to(teachers[0], teachers.shape)
  np.testing.assert_allclose(
    distill.ensemble_distillation(student, same, 2.0),
    distill.kl_distillation(student, teachers[0], 2.0),
    rtol=1e-5,
  )


@pytest.mark.parametrize("mode", ["pairwise", "ensemble"])
def test_server_targets_match_a_loop(mode):
  cross = jax.random.normal(jax.random.key(6), (3, 3, 2, 4))
  weights = jnp.array([1.0, 2.0, 3.0])
  targets, sample_weights = distill.server_distillation_targets(cross, weights, 2.0, mode)
  probs = np.asarray(jax.nn.softmax(cross / 2.0))
  for j in range(3):
    for k in range(3):
      if mode == "pairwise":
        expected = probs[k, k]
      else:
        others = [m for m in range(3) if m != j]
        expected = sum(float(weights[m]) * probs[m, k] for m in others) / sum(
          float(weights[m]) for m in others
        )
      np.testing.assert_allclose(targets[j, k], expected, rtol=1e-5)
      assert sample_weights[j, k] == (0.0 if j == k else weights[k])


def test_total_variation_and_balanced_labels():
  image = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)
  # 2 unit jumps among 6 vertical and 2 among 6 horizontal neighbour pairs
  np.testing.assert_allclose(pseudo_samples.total_variation(image), 2 / 6 + 2 / 6, rtol=1e-6)
  np.testing.assert_array_equal(pseudo_samples.balanced_labels(7, 3), [0, 1, 2, 0, 1, 2, 0])


@pytest.fixture(scope="module")
def three_models(tiny_federation):
  """Three MLPs trained (full batch) on different label subsets of the tiny digits clients."""
  data = tiny_federation
  model = build_model("mlp", 10)
  x = data.train_x.reshape((-1,) + data.train_x.shape[2:])
  y = data.train_y.reshape(-1)
  real = (np.arange(data.max_examples)[None] < data.train_num_examples[:, None]).reshape(-1)
  models = []
  for seed, labels in enumerate([(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]):
    keep = real & np.isin(y, labels)
    params = model.init(jax.random.key(seed), x[:1])
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(p, x[keep]), y[keep]
    ).mean()
    for _ in range(60):
      params = jax.tree.map(lambda w, g: w - 0.5 * g, params, jax.grad(loss)(params))
    models.append(params)
  return model, jax.tree.map(lambda *leaves: jnp.stack(leaves), *models), x[:1]


def test_noise_refinement_lowers_the_pseudo_sample_loss(three_models):
  model, stacked, sample = three_models
  params = jax.tree.map(lambda leaf: leaf[0], stacked)
  noise = jax.random.normal(jax.random.key(7), (10,) + sample.shape[1:])
  labels = pseudo_samples.balanced_labels(10, 10)
  refined, losses = pseudo_samples.refine_pseudo_samples(
    model.apply, params, noise, labels, steps=15, learning_rate=0.05
  )
  before = pseudo_samples.pseudo_sample_loss(model.apply, params, noise, labels)
  after = pseudo_samples.pseudo_sample_loss(model.apply, params, refined, labels)
  np.testing.assert_allclose(losses[0], before, rtol=1e-5)
  assert after < 0.5 * before and losses[-1] < losses[0]


@pytest.mark.parametrize("mode", ["pairwise", "ensemble"])
def test_server_step_moves_students_towards_the_teachers(three_models, mode):
  """After the server step, student j's outputs on teacher k's pseudo-samples are closer
  (lower KL) to teacher k's than before, for every pair j != k."""
  model, stacked, sample = three_models
  options = FedSNDConfig(
    pseudo_per_client=10,
    noise_steps=10,
    noise_learning_rate=0.05,
    distill_steps=20,
    distill_learning_rate=0.1,
    distill_mode=mode,
    server_temperature=2.0,
  )
  setup = ClientSetup(model, sample, optax.sgd(0.1), LocalSchedule(4, 4), Executor("vmap"), 3)
  noise = jax.random.normal(jax.random.key(8), (3, 10) + sample.shape[1:])
  start = phases.server(
    lambda c: {**c, "trained": stacked, "pseudo_start": noise, "weights": jnp.ones(3)}
  )
  finish = phases.server(
    lambda c: {"state": (c["distilled"], c["refined"]), "metrics": c["distill_metrics"]}
  )
  step = jax.jit(phases.Phases(start, *noise_distillation(setup, options, 10), finish))
  (distilled, refined), metrics = step(None, None, jax.random.key(0))
  chex.assert_trees_all_equal_shapes(distilled, stacked)
  assert metrics["server_distill_loss_after"] < metrics["server_distill_loss_before"]
  pick = lambda tree, i: jax.tree.map(lambda leaf: leaf[i], tree)
  for k in range(3):
    teacher_logits = model.apply(pick(stacked, k), refined[k])
    for j in range(3):
      if j == k:
        continue
      gap = lambda params: distill.kl_distillation(
        model.apply(params, refined[k]), teacher_logits, 2.0
      )
      assert gap(pick(distilled, j)) < gap(pick(stacked, j)), (j, k)
