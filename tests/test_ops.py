import chex
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lab.ops.aggregate import tree_broadcast, tree_gather, tree_scatter, weighted_mean
from fedjax_lab.ops.communication import tree_bytes


def test_weighted_mean_formula():
  stacked = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0]]), "b": jnp.array([0.0, 4.0])}
  out = weighted_mean(stacked, jnp.array([1.0, 3.0]))
  chex.assert_trees_all_close(out, {"w": jnp.array([2.5, 5.0]), "b": jnp.array(3.0)})
  zero = weighted_mean(stacked, jnp.zeros(2))
  chex.assert_tree_all_finite(zero)


def test_gather_scatter_roundtrip():
  tree = {"a": jnp.arange(12.0).reshape(4, 3)}
  rows = tree_gather(tree, jnp.array([2, 0]))
  np.testing.assert_array_equal(rows["a"], [[6, 7, 8], [0, 1, 2]])
  updated = tree_scatter(tree, jnp.array([2, 0]), jax_neg(rows))
  np.testing.assert_array_equal(updated["a"][jnp.array([2, 0])], -rows["a"])
  np.testing.assert_array_equal(updated["a"][jnp.array([1, 3])], tree["a"][jnp.array([1, 3])])
  chex.assert_shape(tree_broadcast({"x": jnp.ones((2, 3))}, 5)["x"], (5, 2, 3))


def jax_neg(tree):
  return {k: -v for k, v in tree.items()}


def test_tree_bytes_counts_dtype_sizes():
  tree = {
    "w": jnp.zeros((10, 3), jnp.float32),
    "i": jnp.zeros(4, jnp.int8),
    "h": jnp.zeros((2, 2), jnp.bfloat16),
  }
  assert tree_bytes(tree) == 120 + 4 + 8


def test_seed_statistics_use_the_sample_std_and_paired_t_intervals():
  from scipy import stats as scipy_stats

  from fedjax_lab.stats import describe, paired_difference

  summary = describe([0.5, 0.7, float("nan"), 0.6])
  assert summary["n"] == 3 and summary["n_missing"] == 1
  assert summary["std"] == pytest.approx(np.std([0.5, 0.7, 0.6], ddof=1))
  a, b = np.array([0.81, 0.79, 0.83, 0.80]), np.array([0.78, 0.77, 0.80, 0.79])
  paired = paired_difference(a, b)
  test = scipy_stats.ttest_rel(a, b)
  interval = test.confidence_interval(0.95)
  assert paired["low"] == pytest.approx(interval.low) and paired["high"] == pytest.approx(
    interval.high
  )
  assert paired["verdict"] == ("a > b" if test.pvalue < 0.05 else "no measurable difference")
  assert paired_difference([0.5, 0.7], [0.6, 0.6])["verdict"] == "no measurable difference"


def test_seed_statistics_format_as_table_cells():
  from fedjax_lab.stats import format_paired, format_spread

  assert format_spread([0.5, 0.7, float("nan")], scale=100) == "60.00 ± 14.14 (n=2, 1 diverged)"
  assert format_spread([1.0, 2.0, 3.0], digits=1) == "2.0 ± 1.0 (n=3)"
  assert format_paired([3.0, 4.0, 5.0], [1.0, 1.0, 1.0], digits=1).endswith("a > b")


def test_run_metric_files_round_trip_whatever_the_variant_name(tmp_path):
  from fedjax_lab import grid

  rows = [{"round": 1, "global_accuracy": 0.5}]
  grid.save_run_metrics(tmp_path, "self_distillation_only", 0.1, 3, rows)
  grid.save_run_metrics(tmp_path, "fedavg", 0.5, 0, rows)
  assert grid.read_run_metrics(tmp_path) == {
    (0.1, "self_distillation_only"): {3: rows},
    (0.5, "fedavg"): {0: rows},
  }


def test_tuning_table_chooses_the_candidate_with_the_best_mean_over_its_seeds():
  from fedjax_lab import grid

  records = [
    {"candidate": "a", "seed": 100, "accuracy": 0.9, "clusters": 2.0},
    {"candidate": "a", "seed": 101, "accuracy": 0.5, "clusters": 4.0},
    {"candidate": "b", "seed": 100, "accuracy": 0.8, "clusters": 1.0},
    {"candidate": "b", "seed": 101, "accuracy": 0.8, "clusters": 1.0},
  ]
  lines = grid.tuning_table(records, "accuracy", {"acc": "accuracy", "k": "clusters"}).splitlines()
  assert lines[0].split() == ["candidate", "acc", "k", "seeds", "chosen"]
  assert lines[2].split() == ["a", "0.700", "3.000", "2"]
  assert lines[3].split() == ["b", "0.800", "1.000", "2", "*"]


def test_label_sets_get_sigmoid_cross_entropy_and_recall_at_five():
  from fedjax_lab.ops.losses import per_example_correct, per_example_cross_entropy

  logits = jnp.asarray([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [0.0] * 7])
  labels = jnp.asarray([[0, 6, -1], [-1, -1, -1]], jnp.int32)  # sets {0, 6} and {}
  targets = np.zeros((2, 7))
  targets[0, [0, 6]] = 1
  x = np.asarray(logits)
  expected = (np.logaddexp(0, x) - targets * x).mean(axis=1)  # binary cross-entropy
  np.testing.assert_allclose(per_example_cross_entropy(logits, labels), expected, rtol=1e-6)
  # Top 5 of the first example: classes 0-4; of its tags {0, 6}, one is there.
  np.testing.assert_allclose(per_example_correct(logits, labels), [0.5, 0.0])
  # One class an example (labels with one axis fewer than the logits): softmax, argmax.
  single = jnp.asarray([1, 0], jnp.int32)
  np.testing.assert_allclose(per_example_correct(logits, single), [0.0, 1.0])
