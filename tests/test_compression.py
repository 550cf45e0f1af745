"""Update compression (``ops/aggregators/compression.py``): QSGD lands on its grid and is
unbiased, top-k keeps the largest entries, random-k is unbiased, the bytes are counted as
encoded; through a run, FedAvg still learns and ``bytes_up`` falls by the encoding's ratio."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lab import load_config
from fedjax_lab.ops.aggregators import qsgd, random_k, top_k
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
