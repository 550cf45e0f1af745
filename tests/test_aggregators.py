"""The aggregation contract: formulas of the registered rules, chain composition, the sum form
agreeing with the stack form on every execution strategy, and aggregators plugged into
algorithms through the config alone."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_lab import run
from fedjax_lab.algorithms import ClientSetup
from fedjax_lab.algorithms.base import AGGREGATION_STREAM
from fedjax_lab.config import AggregationConfig, AlgorithmConfig, load_config
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model
from fedjax_lab.ops.aggregators import (
  Aggregator,
  ClientTransform,
  ServerTransform,
  chain,
  clip_update_norm,
  fixed_denominator_mean,
  mean,
  median,
)
from fedjax_lab.ops.robust import weighted_median

KEY = jax.random.key(0)
STACK = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0], [5.0, -4.0]]), "b": jnp.array([0.0, 4.0, 8.0])}
WEIGHTS = jnp.array([1.0, 3.0, 0.0])


def test_mean_is_the_weighted_mean_in_both_forms():
  aggregator = mean()
  value, state = aggregator.aggregate(STACK, WEIGHTS, None, (), KEY)
  chex.assert_trees_all_close(value, {"w": jnp.array([2.5, 5.0]), "b": jnp.array(3.0)})
  assert state == ()
  weighted = jax.tree.map(lambda leaf: jnp.tensordot(WEIGHTS, leaf, axes=1), STACK)
  by_sums, _ = aggregator.finalize(weighted, WEIGHTS.sum(), None, (), KEY)
  chex.assert_trees_all_close(by_sums, value)
  nobody = jax.tree.map(jnp.zeros_like, weighted)  # all weights zero: zeros, not NaN
  zeros, _ = aggregator.finalize(nobody, jnp.zeros(()), None, (), KEY)
  chex.assert_trees_all_equal(zeros, nobody)


def test_fixed_denominator_mean_formula_in_both_forms():
  """``r + sum_k w_k (c_k - r) / D``: the same by stack and by sums; nobody gives ``r``."""
  reference = {"w": jnp.array([1.0, 1.0]), "b": jnp.array(2.0)}
  aggregator = fixed_denominator_mean(4.0)
  value, _ = aggregator.aggregate(STACK, WEIGHTS, reference, (), KEY)
  expected = {"w": jnp.array([1.0 + 6.0 / 4, 1.0 + 16.0 / 4]), "b": jnp.array(2.0 + 4.0 / 4)}
  chex.assert_trees_all_close(value, expected)
  prepared = jax.vmap(lambda c: aggregator.prepare(c, reference, (), KEY))(STACK)
  weighted = jax.tree.map(lambda leaf: jnp.tensordot(WEIGHTS, leaf, axes=1), prepared)
  by_sums, _ = aggregator.finalize(weighted, WEIGHTS.sum(), reference, (), KEY)
  chex.assert_trees_all_close(by_sums, value)
  nobody, _ = aggregator.aggregate(STACK, jnp.zeros(3), reference, (), KEY)
  chex.assert_trees_all_equal(nobody, reference)


def test_weighted_median_formula():
  values = jnp.array([[1.0], [2.0], [100.0], [3.0]])
  np.testing.assert_allclose(weighted_median(values, jnp.ones(4)), [2.0])  # lower median
  np.testing.assert_allclose(weighted_median(values, jnp.array([1.0, 1.0, 5.0, 1.0])), [100.0])
  # A zero-weight row never counts, however extreme.
  np.testing.assert_allclose(weighted_median(values, jnp.array([1.0, 1.0, 0.0, 1.0])), [2.0])
  value, _ = median().aggregate(STACK, WEIGHTS, None, (), KEY)
  chex.assert_trees_all_close(value, {"w": jnp.array([3.0, 6.0]), "b": jnp.array(4.0)})
  assert not median().has_sum_form


def test_clip_update_norm_clips_the_update_not_the_model():
  reference = {"w": jnp.array([10.0, 10.0])}
  clip = clip_update_norm(1.0)
  far = clip.apply({"w": jnp.array([13.0, 14.0])}, reference, (), KEY)  # update norm 5
  chex.assert_trees_all_close(far, {"w": jnp.array([10.6, 10.8])})
  near = clip.apply({"w": jnp.array([10.3, 10.4])}, reference, (), KEY)  # norm 0.5: unchanged
  chex.assert_trees_all_close(near, {"w": jnp.array([10.3, 10.4])})
  with pytest.raises(ValueError, match="aggregation.clip_norm must be > 0"):
    clip_update_norm(0.0)


def test_chain_applies_client_then_reducer_then_server_transforms():
  double = ClientTransform(lambda t: (), lambda c, r, s, k: jax.tree.map(lambda x: 2 * x, c))

  def count_and_shift(value, reference, calls, key):
    return jax.tree.map(lambda x: x + 1.0, value), calls + 1

  shift = ServerTransform(lambda t: jnp.zeros((), jnp.int32), count_and_shift)
  aggregator = chain(double, mean(), shift)
  state = aggregator.init(STACK)
  value, state = aggregator.aggregate(STACK, WEIGHTS, None, state, KEY)
  chex.assert_trees_all_close(value, {"w": jnp.array([6.0, 11.0]), "b": jnp.array(7.0)})
  assert int(state[2]) == 1 and aggregator.has_sum_form
  assert not chain(double, median()).has_sum_form
  with pytest.raises(ValueError, match="exactly one Aggregator"):
    chain(double, shift)
  with pytest.raises(ValueError, match="client transforms come before"):
    chain(mean(), double)


def _setup(data, strategy: str, aggregator: Aggregator) -> ClientSetup:
  return ClientSetup(
    build_model("mlp", 10),
    data.train_x[0, :1],
    optax.sgd(0.1),
    LocalSchedule(8, data.max_examples),
    Executor(strategy, chunk_size=2),
    data.num_clients,
    aggregator=aggregator,
  )


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["vmap", "chunked", "loop"])
def test_cohort_reduce_sum_form_equals_stack_form(tiny_federation, strategy):
  """``cohort_reduce`` reduces by sums (``map_sum``) for a chain with a sum form; the same
  chain's stacked ``aggregate`` gives the same value."""
  aggregator = chain(clip_update_norm(0.5), mean())
  setup = _setup(tiny_federation, strategy, aggregator)
  train = setup.local_trainer()
  cohort = tiny_federation.cohort(np.arange(5))
  start = setup.init_params(KEY)

  def contribution(params, x, y, n, key, context):
    trained, result = train(params, x, y, n, key, None)
    return trained, n.astype(jnp.float32), result.mean_loss

  reduce = setup.cohort_reduce(contribution)
  state = aggregator.init(start)
  value, total, losses, _ = reduce(start, cohort, KEY, state)
  trained, _ = setup.cohort_trainer(None, None, None)(start, cohort, KEY)
  expected, _ = aggregator.aggregate(
    trained,
    cohort.num_examples.astype(jnp.float32),
    start,
    state,
    jax.random.fold_in(KEY, AGGREGATION_STREAM),
  )
  chex.assert_trees_all_close(value, expected, atol=1e-6)
  assert float(total) == float(cohort.num_examples.sum())


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["vmap", "chunked"])
def test_a_poisson_cohort_padded_with_empty_clients_gives_the_unpadded_round(
  tiny_federation, strategy
):
  """FedAvg with the fixed-denominator mean: padding a cohort with empty clients (the runner's
  Poisson cohorts) changes neither the model nor the training loss."""
  from fedjax_lab.algorithms.fedopt import fedopt
  from fedjax_lab.round_step import padded_cohort

  setup = _setup(tiny_federation, strategy, fixed_denominator_mean(2.5))
  algorithm = fedopt(dataclasses.replace(setup, weighting="uniform"), optax.sgd(1.0))
  state = algorithm.init(KEY)
  ids = np.array([1, 3, 4], np.int32)
  padded = padded_cohort(tiny_federation, ids, 8)
  assert padded.client_ids.shape == (8,) and list(padded.num_examples[3:]) == [0] * 5
  plain, plain_metrics = jax.jit(algorithm.round)(state, tiny_federation.cohort(ids), KEY)
  # split(key, 8)[:3] == split(key, 3) (partitionable threefry): the real clients' keys agree
  with_padding, metrics = jax.jit(algorithm.round)(state, padded, KEY)
  chex.assert_trees_all_close(with_padding.params, plain.params, atol=1e-6)
  assert float(metrics["train_loss"]) == pytest.approx(float(plain_metrics["train_loss"]))


@pytest.mark.slow
def test_median_resists_a_corrupted_client_where_the_mean_does_not(tiny_federation):
  """Through ``cohort_reduce``: one client's contribution is its model times 1e6; the median
  stays at the honest models' scale, the mean does not."""
  cohort = tiny_federation.cohort(np.arange(5))
  results = {}
  for name, aggregator in (("mean", mean()), ("median", median())):
    setup = _setup(tiny_federation, "vmap", aggregator)
    train = setup.local_trainer()

    def contribution(params, x, y, n, key, scale):
      trained, _ = train(params, x, y, n, key, None)
      return jax.tree.map(lambda leaf: scale * leaf, trained), jnp.float32(1.0), ()

    start = setup.init_params(KEY)
    scales = jnp.array([1.0, 1.0, 1e6, 1.0, 1.0])
    value, *_ = setup.cohort_reduce(contribution)(start, cohort, KEY, (), context=scales)
    results[name] = max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(value))
  assert results["median"] < 10 < 1e4 < results["mean"]


BASE = [
  "data.source=digits",
  "data.num_clients=8",
  "data.dirichlet.min_examples=15",
  "rounds=6",
  "cohort_size=4",
  "eval_every=6",
  "checkpoint_every=0",
  "local.batch_size=16",
]


@pytest.mark.slow
@pytest.mark.parametrize(
  "algorithm,aggregation",
  [
    ("fedavg", AggregationConfig("median")),
    ("moon", AggregationConfig("mean", clip_norm=5.0)),
    ("fedprox", AggregationConfig("median", clip_norm=50.0)),
  ],
  ids=["fedavg-median", "moon-clipped_mean", "fedprox-clipped_median"],
)
def test_any_registered_algorithm_runs_with_any_aggregator(tmp_path, algorithm, aggregation):
  """No algorithm is edited to gain a rule: the config alone changes the aggregator of a
  method whose uploads all pass through it (``aggregated_uploads``; the others are refused,
  ``test_guarantees.py``), and the run still learns (digits, 10 classes: chance is 0.1)."""
  config = dataclasses.replace(
    load_config(None, BASE + [f"out_dir={tmp_path}"]),
    algorithm=AlgorithmConfig(algorithm),
    aggregation=aggregation,
  )
  final = run(config, progress=False).metrics[-1]
  assert final["global_accuracy"] > 0.3
