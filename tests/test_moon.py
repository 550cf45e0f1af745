"""MOON: the model-contrastive loss as an op, representations from the read-out layer, the
algorithm's executors and per-client state, and its effect (representations nearer the
received model than the previous one)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_lab.algorithms import ClientSetup, compiled_round
from fedjax_lab.algorithms.moon import MOONConfig, moon
from fedjax_lab.config import (
  load_config,
)
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model
from fedjax_lab.ops.contrastive import cosine_similarity, model_contrastive_loss


def test_model_contrastive_loss_is_the_two_way_softmax_cross_entropy():
  keys = jax.random.split(jax.random.key(0), 3)
  z, z_glob, z_prev = (jax.random.normal(k, (5, 7)) for k in keys)
  tau = 0.5
  sim = lambda a, b: np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  positive, negative = np.exp(sim(z, z_glob) / tau), np.exp(sim(z, z_prev) / tau)
  want = np.mean(-np.log(positive / (positive + negative)))
  np.testing.assert_allclose(model_contrastive_loss(z, z_glob, z_prev, tau), want, rtol=1e-5)
  # Global and previous alike: no preference, log 2.
  np.testing.assert_allclose(model_contrastive_loss(z, z_glob, z_glob, tau), np.log(2), rtol=1e-6)
  # Masked rows count for nothing.
  mask = jnp.array([1, 1, 0, 0, 1])
  keep = np.array([0, 1, 4])
  np.testing.assert_allclose(
    model_contrastive_loss(z, z_glob, z_prev, tau, mask),
    model_contrastive_loss(z[keep], z_glob[keep], z_prev[keep], tau),
    rtol=1e-6,
  )


def test_a_gradient_step_moves_towards_the_global_and_away_from_the_previous_representation():
  keys = jax.random.split(jax.random.key(1), 3)
  z, z_glob, z_prev = (jax.random.normal(k, (8, 6)) for k in keys)
  grads = jax.grad(model_contrastive_loss, argnums=(0, 1, 2))(z, z_glob, z_prev, 0.5)
  assert float(jnp.abs(grads[1]).max()) == 0 and float(jnp.abs(grads[2]).max()) == 0
  # Descent raises every example's margin sim(z, z_glob) - sim(z, z_prev).
  margin = lambda z: cosine_similarity(z, z_glob) - cosine_similarity(z, z_prev)
  assert bool(jnp.all(margin(z - 0.01 * grads[0]) > margin(z)))


def test_features_are_what_the_head_reads():
  model = build_model("femnist_cnn", 10, "im2col")  # convolutions intercepted too
  x = jax.random.normal(jax.random.key(2), (3, 28, 28, 1))
  params = model.init(jax.random.key(0), x)
  logits, features = model.apply_with_features(params, x)
  np.testing.assert_array_equal(logits, model.apply(params, x))
  head = params["head"]
  np.testing.assert_allclose(features @ head["kernel"] + head["bias"], logits, atol=1e-5)


COHORTS = [np.array([0, 2, 4]), np.array([1, 2, 5])]


def _moon(data, mu, strategy, epochs=1):
  setup = ClientSetup(
    build_model("mlp", 10),
    data.train_x[0, :1],
    optax.sgd(0.05),
    LocalSchedule(4, data.max_examples, epochs),
    Executor(strategy),
    data.num_clients,
  )
  algorithm = moon(setup, MOONConfig(mu=mu))
  return setup, algorithm, compiled_round(algorithm, setup.executor)


def _rounds(data, strategy):
  _, algorithm, round_fn = _moon(data, 2.0, strategy)
  state = initial = algorithm.init(jax.random.key(0))
  for r, ids in enumerate(COHORTS):
    state, metrics = round_fn(state, data.cohort(ids), jax.random.key(r + 1))
  return initial, state


def test_vmap_and_loop_agree_and_only_participants_update_their_previous_model(tiny_federation):
  initial, vmapped = _rounds(tiny_federation, "vmap")
  _, looped = _rounds(tiny_federation, "loop")
  chex.assert_trees_all_close(vmapped.params, looped.params, atol=1e-5)
  chex.assert_trees_all_close(vmapped.previous_params, looped.previous_params, atol=1e-5)
  row = lambda state, client: jax.tree.map(lambda leaf: leaf[client], state.previous_params)
  chex.assert_trees_all_equal(row(vmapped, 3), initial.params)  # never sampled: theta_0
  assert not np.allclose(row(vmapped, 5)["head"]["kernel"], initial.params["head"]["kernel"])


@pytest.mark.slow
def test_contrast_keeps_local_representations_near_the_global_models(tiny_federation):
  """The method's effect: after a round from the same state, each trained client's
  representation of its own data is nearer the received global model's than its previous
  model's by a wider margin (mean cosine difference) with the contrastive term than without it
  (mu = 0: FedAvg through the same code; round 1, where previous = global, is the same)."""
  similarity = {}
  for mu in (0.0, 5.0):
    data = tiny_federation
    setup, algorithm, round_fn = _moon(data, mu, "vmap", epochs=3)
    state = algorithm.init(jax.random.key(0))
    cohort = data.cohort(np.arange(data.num_clients))
    state, _ = round_fn(state, cohort, jax.random.key(1))  # now previous != global
    received, previous = state.params, state.previous_params
    state, _ = round_fn(state, cohort, jax.random.key(2))
    per_client = []
    for client in range(data.num_clients):
      row = lambda stacked: jax.tree.map(lambda leaf: leaf[client], stacked)
      x = cohort.x[client, : cohort.num_examples[client]]
      features = lambda params: setup.model.apply_with_features(params, x)[1]
      z = features(row(state.previous_params))
      margin = cosine_similarity(z, features(received)) - cosine_similarity(
        z, features(row(previous))
      )
      per_client.append(float(margin.mean()))
    similarity[mu] = np.array(per_client)
  assert np.all(similarity[5.0] > similarity[0.0]), similarity


def test_bad_moon_config_names_the_field():
  with pytest.raises(ValueError, match="algorithm.moon.temperature must be > 0"):
    load_config(None, ["algorithm.name=moon", "algorithm.moon.temperature=0"])
