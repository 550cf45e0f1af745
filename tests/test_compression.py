"""Update compression (``ops/aggregators/compression.py``): QSGD lands on its grid and is
unbiased, top-k keeps the largest entries, random-k is unbiased, the bytes are counted as
encoded; through a run, FedAvg still learns and ``bytes_up`` falls by the encoding's ratio.
Error feedback: what a client sent plus its residual is what it meant to send, round after
round; through ``cohort_reduce`` the cohort's residuals are exactly what top-k left out, and a
client without examples keeps its own."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import mlp_setup

from fedjax_lab import load_config
from fedjax_lab.ops.aggregators import qsgd, random_k, top_k, with_feedback
from fedjax_lab.ops.aggregators.compression import QSGDOptions, RandomKOptions, TopKOptions

REFERENCE = {"w": jnp.ones((6, 5)), "b": jnp.full((5,), 2.0)}
UPDATE = {
  "w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32),
  "b": jnp.asarray([0.5, -3.0, 0.0, 1.0, 0.25], jnp.float32),
}
CONTRIBUTION = jax.tree.map(jnp.add, REFERENCE, UPDATE)


def _sent(transform, key):
  """The decoded update of one client (contribution minus reference)."""
  out = transform.apply(CONTRIBUTION, REFERENCE, (), key)
  return jax.tree.map(jnp.subtract, out, REFERENCE)


def _mean_over_keys(transform, draws: int):
  keys = jax.random.split(jax.random.key(1), draws)
  return jax.tree.map(lambda leaf: leaf.mean(0), jax.vmap(lambda k: _sent(transform, k))(keys))


def test_qsgd_lands_on_its_levels_and_is_unbiased():
  sent = _sent(qsgd(2), jax.random.key(0))
  for name in UPDATE:
    norm = float(jnp.linalg.norm(UPDATE[name]))
    levels = np.asarray(jnp.abs(sent[name])) * 3 / norm  # 2 bits: levels 0..3
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert (np.sign(sent[name]) * np.sign(UPDATE[name]) >= 0).all()
  mean = _mean_over_keys(qsgd(2), 20_000)
  for name in UPDATE:
    np.testing.assert_allclose(
      mean[name], UPDATE[name], atol=0.05 * float(jnp.abs(UPDATE[name]).max())
    )


def test_top_k_keeps_the_largest_entries_and_never_grows_the_norm():
  sent = _sent(top_k(0.2), jax.random.key(0))  # 6 of the 30 weights, 1 of the 5 biases
  w = np.asarray(UPDATE["w"]).ravel()
  kept = np.flatnonzero(np.asarray(sent["w"]).ravel())
  assert set(kept) == set(np.argsort(-np.abs(w))[:6])
  np.testing.assert_allclose(np.asarray(sent["w"]).ravel()[kept], w[kept], atol=1e-6)
  np.testing.assert_allclose(sent["b"], [0, -3.0, 0, 0, 0], atol=1e-6)
  assert TopKOptions.keeps_clipping and not QSGDOptions.keeps_clipping


def test_random_k_is_unbiased():
  sent = _sent(random_k(0.2), jax.random.key(0))
  assert int((np.asarray(sent["w"]) != 0).sum()) == 6
  mean = _mean_over_keys(random_k(0.2), 20_000)
  for name in UPDATE:
    np.testing.assert_allclose(
      mean[name], UPDATE[name], atol=0.1 * float(jnp.abs(UPDATE[name]).max())
    )


def test_bytes_are_counted_as_encoded():
  shapes = jax.eval_shape(lambda: REFERENCE)  # 30 and 5 values
  assert QSGDOptions(bits=4).encoded_bytes(shapes) == (4 + math.ceil(30 * 5 / 8)) + (4 + 4)
  assert TopKOptions(fraction=0.2).encoded_bytes(shapes) == 8 * 6 + 8 * 1
  assert RandomKOptions(fraction=0.2).encoded_bytes(shapes) == (4 * 6 + 8) + (4 * 1 + 8)


@pytest.mark.parametrize(
  "overrides,message",
  [
    (
      ["compression.name=qsgd", "compression.qsgd.bits=0"],
      "compression.qsgd.bits must be in [1, 16]",
    ),
    (["algorithm.name=scaffold", "compression.name=top_k"], "compression.name must be none"),
    (["compression.error_feedback=true"], "compression.error_feedback must be false with"),
    (["algorithm.name=moon", "compression.name=top_k", "compression.error_feedback=true"],
     "compression.error_feedback must be false for algorithm.name=moon"),
    (["compression.name=top_k", "compression.error_feedback=true", "aggregation.clip_norm=1"],
     "aggregation.clip_norm must be 0 with compression.error_feedback"),
    (["compression.name=top_k", "compression.error_feedback=true", "cohort_sampling=poisson",
      "algorithm.weighting=uniform"], "cohort_sampling must be fixed with compression.error"),
    (
      ["privacy.noise_multiplier=1", "aggregation.clip_norm=1", "algorithm.weighting=uniform",
       "compression.name=qsgd"],
      "compression.name must be none or top_k with privacy.noise_multiplier > 0",
    ),
  ],
)  # fmt: skip
def test_unsound_compression_settings_are_refused(overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    load_config(None, ["data.num_clients=10", *overrides])


@pytest.mark.slow
def test_fedavg_learns_through_qsgd_and_sends_what_the_encoding_says(tmp_path):
  from fedjax_lab.runner import run

  base = ["data.source=digits", "data.num_clients=8", "cohort_size=4", "rounds=8"]
  base += ["eval_every=8", "checkpoint_every=0", "local.learning_rate=0.1"]
  settings = {"dense": [], "qsgd": ["compression.name=qsgd", "compression.qsgd.bits=4"]}
  rows = {}
  for name, extra in settings.items():
    config = load_config(None, [*base, *extra, f"out_dir={tmp_path / name}"])
    rows[name] = run(config, progress=False).metrics
  dense, compressed = rows["dense"][-1], rows["qsgd"][-1]
  assert compressed["global_accuracy"] > 0.7 and dense["global_accuracy"] > 0.7
  assert abs(compressed["global_accuracy"] - dense["global_accuracy"]) < 0.05
  ratio = compressed["bytes_up"] / dense["bytes_up"]
  assert 5 / 32 < ratio < 6 / 32  # 4 bits and a sign per float32, plus a norm per leaf
  assert compressed["bytes_down"] == dense["bytes_down"]


@pytest.mark.parametrize("transform", [qsgd(4), top_k(0.2), random_k(0.2)])
def test_an_empty_clients_zero_update_stays_zero_when_compiled(transform):
  """Clients lost to the system train as empty ones: ``c = reference``. (QSGD once divided by
  ``max(norm, tiny)``, which XLA:CPU turned into NaN.)"""
  out = jax.jit(transform.apply)(REFERENCE, REFERENCE, (), jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, out, REFERENCE)


def test_error_feedback_sends_in_time_what_the_compressor_left_out():
  """Top-1 of 4 coordinates, the same update for 40 rounds: without feedback the three small
  coordinates are never sent; with it, after ``T`` rounds sent + residual = ``T u`` exactly,
  and every coordinate has been sent."""
  u = jnp.array([4.0, 1.0, -0.5, 0.25])
  reference = jnp.zeros(4)
  compressor = top_k(0.25)
  residual, total, plain = jnp.zeros(4), jnp.zeros(4), jnp.zeros(4)
  step = jax.jit(with_feedback, static_argnums=0)
  for t in range(40):
    sent, residual = step(compressor, reference + u, reference, residual, True, jax.random.key(t))
    total += sent
    plain += compressor.apply(reference + u, reference, (), jax.random.key(t))
    np.testing.assert_allclose(total + residual, (t + 1) * u, rtol=1e-6)
  assert (plain[1:] == 0).all() and (total != 0).all()
  kept, untouched = step(compressor, reference, reference, residual, False, jax.random.key(0))
  np.testing.assert_array_equal(kept, reference)  # no examples: sends nothing
  np.testing.assert_array_equal(untouched, residual)  # and keeps its residual


def test_cohort_reduce_keeps_each_clients_residual(tiny_federation):
  """FedAvg through ``cohort_reduce`` with top-k and error feedback: the aggregate is the mean
  of ``x + Q(u_k)``, each cohort client's residual is ``u_k - Q(u_k)`` (the first round),
  the others' stay 0; a round where the same clients bring no examples leaves them."""
  import optax

  from fedjax_lab.algorithms.base import round_keys
  from fedjax_lab.algorithms.fedopt import fedopt
  from fedjax_lab.ops.aggregators import error_feedback, mean

  data = tiny_federation
  compressor = top_k(0.1)
  setup = mlp_setup(data, aggregator=error_feedback(mean(), compressor, data.num_clients))
  algorithm = fedopt(setup, optax.sgd(1.0))
  state = algorithm.init(jax.random.key(0))
  cohort = data.cohort(np.array([0, 2, 3]))
  key = jax.random.key(7)
  new_state, _ = jax.jit(algorithm.round)(state, cohort, key)
  x = state.params
  train = setup.local_trainer()
  keys = round_keys(key, cohort)
  updates = [
    jax.tree.map(jnp.subtract, train(x, cohort.x[k], cohort.y[k], cohort.num_examples[k],
                                     keys[k], x)[0], x)
    for k in range(3)
  ]  # fmt: skip
  residuals = new_state.aggregator_state[1]
  for row, client in enumerate([0, 2, 3]):
    sent = jax.tree.map(jnp.subtract, compressor.apply(jax.tree.map(jnp.add, x, updates[row]),
                                                       x, (), key), x)  # fmt: skip
    left_out = jax.tree.map(jnp.subtract, updates[row], sent)
    jax.tree.map(lambda r, e: np.testing.assert_allclose(r[client], e, atol=1e-6), residuals,
                 left_out)  # fmt: skip
  assert all(float(jnp.abs(leaf[1]).max()) == 0 for leaf in jax.tree.leaves(residuals))
  weights = np.asarray(cohort.num_examples, np.float64) / cohort.num_examples.sum()
  expected = jax.tree.map(
    lambda p, r, *u: p + sum(w * (uk - r[c]) for w, uk, c in zip(weights, u, [0, 2, 3])),
    x, residuals, *updates)  # fmt: skip
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), new_state.params,
               expected)  # fmt: skip
  # The same clients present without examples (lost to the system): their residuals stay.
  empty = data.cohort(np.array([0, 2, 3]), reporting=0)
  later, _ = jax.jit(algorithm.round)(new_state, empty, key)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), later.aggregator_state[1],
               residuals)  # fmt: skip
