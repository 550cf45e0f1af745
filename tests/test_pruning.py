"""Masked pruning, the wireless system model, the KKT allocation and the adaptive-pruning
method (ops/pruning.py, ops/wireless.py, ops/allocation.py, algorithms/adaptive_pruning.py)."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_lab.engine.local import LocalSchedule, make_local_trainer
from fedjax_lab.ops import pruning, wireless
from fedjax_lab.ops.allocation import RoundProblem, allocate

pytestmark = (
  pytest.mark.slow
)  # trains whole federations to show the method's effect (make test-fast skips it)

PARAMS = {
  "conv": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 2, 4)), jnp.float32)},
  "dense": {
    "kernel": jnp.asarray(np.random.default_rng(1).normal(size=(7, 5)), jnp.float32),
    "bias": jnp.ones(5),
  },
}


@pytest.mark.parametrize("rho", [0.0, 0.25, 0.5, 0.9])
def test_masks_keep_exactly_the_requested_fraction_per_layer_ties_included(rho):
  tied = {"w": jnp.ones((6, 5)), "b": jnp.ones(5)}  # every magnitude equal
  for params in (PARAMS, tied):
    for mask in (
      pruning.magnitude_mask(params, rho),
      pruning.random_mask(jax.random.key(3), params, rho),
    ):
      for leaf, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
        expected = leaf.size - int(np.floor(np.float32(rho) * leaf.size)) if leaf.ndim > 1 else 5
        assert int(m.sum()) == expected and set(np.unique(m)) <= {0.0, 1.0}
  structured = pruning.magnitude_mask(PARAMS, rho, structured=True)["dense"]["kernel"]
  kept_units = structured.sum(axis=0) / 7
  assert set(np.unique(kept_units)) <= {0.0, 1.0}
  assert int(kept_units.sum()) == 5 - int(np.floor(np.float32(rho) * 5))


def test_magnitude_masks_keep_the_largest_weights_and_vmap_over_ratios():
  kernel = PARAMS["dense"]["kernel"]
  mask = pruning.magnitude_mask(PARAMS, 0.6)["dense"]["kernel"]
  assert np.abs(kernel)[mask == 1].min() >= np.abs(kernel)[mask == 0].max()
  rhos = jnp.asarray([0.0, 0.3, 0.6])
  stacked = jax.jit(jax.vmap(lambda r: pruning.magnitude_mask(PARAMS, r)))(rhos)
  for i, rho in enumerate(rhos):
    one = pruning.magnitude_mask(PARAMS, rho)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[i], b), stacked, one)


def test_masked_weights_stay_zero_through_local_training():
  mask = pruning.magnitude_mask(PARAMS, 0.5)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(16, 7)), jnp.float32)
  y = jnp.asarray(np.arange(16) % 5)

  def objective(params, bx, by, batch_mask, mask):
    logits = bx @ pruning.apply_mask(params, mask)["dense"]["kernel"] + params["dense"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, by).mean()

  schedule = LocalSchedule(batch_size=4, max_examples=16, epochs=3)
  train = make_local_trainer(objective, optax.sgd(0.5, momentum=0.9), schedule)
  start = pruning.apply_mask(PARAMS, mask)
  trained, _ = train(start, x, y, jnp.asarray(16), jax.random.key(0), mask)
  kernel, kept = trained["dense"]["kernel"], mask["dense"]["kernel"]
  assert np.all(kernel[kept == 0] == 0)
  assert np.any(kernel[kept == 1] != start["dense"]["kernel"][kept == 1])


def test_mask_aware_mean_equals_a_per_weight_loop():
  rng = np.random.default_rng(4)
  values = rng.normal(size=(5, 4, 3)).astype(np.float32)
  masks = (rng.uniform(size=(5, 4, 3)) < 0.4).astype(np.float32)
  masks[:, 0, 0] = 0  # nobody kept this weight
  weights = rng.uniform(1, 10, 5).astype(np.float32)
  fallback = rng.normal(size=(4, 3)).astype(np.float32)
  total = weights.sum()
  mean_kept = np.tensordot(weights / total, masks * values, 1)
  mean_mask = np.tensordot(weights / total, masks, 1)
  got = np.asarray(pruning.mask_aware_mean(mean_kept, mean_mask, fallback))
  for i, j in itertools.product(range(4), range(3)):
    keepers = masks[:, i, j] == 1
    expected = (
      np.sum(weights[keepers] * values[keepers, i, j]) / np.sum(weights[keepers])
      if keepers.any()
      else fallback[i, j]
    )
    np.testing.assert_allclose(got[i, j], expected, rtol=1e-5)


def test_upload_bytes_follow_the_mask():
  mask = pruning.magnitude_mask(PARAMS, 0.75)
  kept_weights = 72 - 54 + 35 - 26  # conv 72 weights, dense 35
  bitmaps = 9 + 5  # ceil(72 / 8) + ceil(35 / 8)
  expected = 4 * (kept_weights + 5) + bitmaps  # the bias goes dense
  assert float(pruning.upload_bytes(mask)) == expected
  assert float(pruning.kept_fraction(mask)) == pytest.approx((kept_weights + 5) / 112)


def test_latency_formulas_on_a_hand_computed_case():
  # g = p h / N0 = 1e7 Hz; b = 1 MHz: rate = 1e6 * log2(11) bits/s
  rate = wireless.shannon_rate(1e6, 1e7)
  assert rate == pytest.approx(1e6 * np.log2(11.0))
  assert wireless.bandwidth_for_rate(rate, 1e7) == pytest.approx(1e6, rel=1e-9)
  assert wireless.bandwidth_for_rate(1e7 / np.log(2) * 1.01, 1e7) == np.inf  # beyond the limit
  devices = wireless.place_devices(3, 0, cycles_per_sample=2e6)
  seconds = wireless.computation_seconds(devices, np.array([100, 100, 100]), 0.5, 0.8)
  np.testing.assert_allclose(seconds, 2e6 * 100 / devices.cpu_hz * (1 - 0.4))
  assert devices.noise_w_per_hz == pytest.approx(10 ** (-17.4) / 1000)
  assert np.all((devices.distance_m >= 50) & (devices.distance_m <= 500))
  # path loss at 1 km is 128.1 dB; the fading power averages 1
  far = dataclasses.replace(devices, distance_m=np.full(20000, 1000.0))
  gains = far.channel_gains(np.random.default_rng(0))
  assert gains.mean() == pytest.approx(10 ** (-12.81), rel=0.03)


def _random_problem(rng, devices: int) -> RoundProblem:
  return RoundProblem(
    compute_s=rng.uniform(0.05, 0.4, devices),
    snr_bandwidth=rng.uniform(2e6, 5e7, devices),
    weights=rng.dirichlet(np.ones(devices)),
    prunable_bits=32 * 5e4,
    fixed_bits=5e4 + 32 * 200,
    shared_fraction=0.9,
    latency_s=rng.uniform(0.45, 0.8),
    bandwidth_hz=rng.uniform(1.5e6, 4e6),
    rho_max=0.9,
  )


@pytest.mark.parametrize("seed", range(6))
def test_kkt_allocation_matches_a_brute_force_grid(seed):
  problem = _random_problem(np.random.default_rng(seed), 3)
  chosen = allocate(problem)
  grid = np.linspace(0, problem.rho_max, 121)
  needed = np.stack([problem.bandwidth_needed(np.full(3, r)) for r in grid])  # [grid, 3]
  total = needed[:, None, None, 0] + needed[None, :, None, 1] + needed[None, None, :, 2]
  objective = (
    problem.weights[0] * grid[:, None, None]
    + problem.weights[1] * grid[None, :, None]
    + problem.weights[2] * grid[None, None, :]
  )
  feasible = total <= problem.bandwidth_hz
  if not feasible.any():
    assert not chosen.feasible
    return
  best = objective[feasible].min()
  assert chosen.feasible
  ours = problem.weights @ chosen.rho
  assert ours <= best + 1e-9  # the grid can only be worse (coarser)
  assert ours >= best - problem.rho_max / 120  # and not by more than one grid step
  assert chosen.bandwidth_hz.sum() <= problem.bandwidth_hz * (1 + 1e-9)
  rate = wireless.shannon_rate(chosen.bandwidth_hz, problem.snr_bandwidth)
  latency = (
    problem.compute_s * (1 - problem.shared_fraction * chosen.rho)
    + (problem.fixed_bits + (1 - chosen.rho) * problem.prunable_bits) / rate
  )
  assert latency.max() <= problem.latency_s * (1 + 1e-6)
  assert np.all((chosen.rho >= 0) & (chosen.rho <= problem.rho_max))


def test_allocation_without_pressure_prunes_nothing_and_says_when_the_budget_is_impossible():
  problem = _random_problem(np.random.default_rng(0), 4)
  relaxed = allocate(dataclasses.replace(problem, latency_s=10.0))
  assert relaxed.feasible and np.all(relaxed.rho == 0)
  assert relaxed.bandwidth_hz.sum() == pytest.approx(problem.bandwidth_hz)
  impossible = allocate(dataclasses.replace(problem, latency_s=0.01))
  assert not impossible.feasible and np.all(impossible.rho == problem.rho_max)


@pytest.fixture(scope="module")
def shard_runs(tmp_path_factory):
  """``shard_runs(variant)``: digits in shards (2 classes per client), the method, its unpruned
  comparator or FedAvg with the same latency bookkeeping, on the same data and channel draws;
  each variant run when first asked for."""
  from fedjax_lab.config import load_config
  from fedjax_lab.runner import run

  base = [
    "data.source=digits",
    "data.partition=shards",
    "data.num_clients=10",
    "cohort_size=5",
    "rounds=30",
    "eval_every=30",
    "checkpoint_every=0",
    "local.learning_rate=0.1",
    "local.batch_size=16",
    "algorithm.name=adaptive_pruning",
    "algorithm.adaptive_pruning.latency_budget_s=0.25",
    "algorithm.adaptive_pruning.ratio=0.7",
  ]
  variants = {
    "adaptive": [],
    "unpruned": ["algorithm.adaptive_pruning.pruning=none"],
    "unpruned_fastest": [
      "algorithm.adaptive_pruning.pruning=none",
      "algorithm.adaptive_pruning.bandwidth=fastest",
    ],
    "fedavg": [
      "algorithm.adaptive_pruning.pruning=none",
      "algorithm.adaptive_pruning.personal_groups=0",
    ],
  }

  @functools.cache
  def result(name):
    out = tmp_path_factory.mktemp(name)
    return run(load_config(None, base + variants[name] + [f"out_dir={out}"]), progress=False)

  return result


def test_adaptive_pruning_meets_the_budget_and_cuts_latency_at_similar_accuracy(shard_runs):
  adaptive, unpruned = shard_runs("adaptive").metrics, shard_runs("unpruned").metrics
  fastest = shard_runs("unpruned_fastest").metrics
  met = [row for row in adaptive if row["allocation_feasible"] == 1.0]
  assert len(met) >= 0.8 * len(adaptive)  # a deep fade may make the budget impossible
  assert max(row["latency_s"] for row in met) <= 0.25 * (1 + 1e-6)
  assert np.mean([row["prune_ratio_mean"] for row in adaptive]) > 0.05
  cumulative = lambda rows: sum(row["latency_s"] for row in rows)
  # Pruning saves latency beyond what the bandwidth allocation alone saves.
  assert cumulative(adaptive) < 0.9 * cumulative(fastest) < 0.9 * cumulative(unpruned)
  assert np.mean([r["upload_bytes_mean"] for r in adaptive]) < unpruned[0]["upload_bytes_mean"]
  accuracy = lambda rows: rows[-1]["client_accuracy_mean"]
  assert accuracy(adaptive) > accuracy(unpruned) - 0.05


@pytest.mark.parametrize("strategy", ["vmap", "loop", "chunked"])
def test_every_strategy_runs_the_method_with_and_without_a_personal_part(tmp_path, strategy):
  from fedjax_lab.config import load_config
  from fedjax_lab.runner import run

  for personal in (0, 1):
    config = load_config(
      None,
      [
        "data.source=digits",
        "data.num_clients=6",
        "cohort_size=3",
        "rounds=2",
        "checkpoint_every=0",
        "algorithm.name=adaptive_pruning",
        f"algorithm.adaptive_pruning.personal_groups={personal}",
        f"execution.strategy={strategy}",
        "execution.chunk_size=2",
        f"out_dir={tmp_path / str(personal)}",
      ],
    )
    assert np.isfinite(run(config, progress=False).metrics[-1]["train_loss"])


def test_personal_heads_beat_one_shared_model_on_pathological_shards(shard_runs):
  personal = shard_runs("unpruned").metrics[-1]["client_accuracy_mean"]
  shared = shard_runs("fedavg").metrics[-1]["client_accuracy_mean"]
  assert personal > shared + 0.1
