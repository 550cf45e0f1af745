import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lab.ops.divergence import (
  mean_pairwise_cosine,
  mean_pairwise_cosine_from_sum,
  unit_vector,
)
from fedjax_lab.ops.recombine import recombination_units, recombine

M = 5


def _slots():
  """5 slot models whose every entry is the slot index, so rows reveal where they came from."""
  shapes = {
    "conv": {"kernel": (3, 2), "bias": (2,)},
    "dense": {"kernel": (4,), "bias": (1,)},
    "head": {"kernel": (2, 2)},
  }
  return jax.tree.map(
    lambda s: jnp.broadcast_to(
      jnp.arange(M, dtype=jnp.float32).reshape((M,) + (1,) * len(s)), (M,) + s
    ),
    shapes,
    is_leaf=lambda x: isinstance(x, tuple),
  )


ORDER = ("conv", "dense", "head")


def _sources(stacked):
  """For each leaf, which old slot each new slot came from ``[m]``."""
  return jax.tree.map(lambda leaf: np.asarray(leaf.reshape(M, -1)[:, 0]).astype(int), stacked)


@pytest.mark.parametrize("granularity", ["leaf", "layer", "block"])
def test_every_old_slot_is_used_exactly_once_per_unit(granularity):
  slots = _slots()
  units = recombination_units(jax.tree.map(lambda l: l[0], slots), ORDER, granularity, 0.4)
  out = recombine(jax.random.key(3), slots, units)
  for source in jax.tree.leaves(_sources(out)):
    assert sorted(source.tolist()) == list(range(M))
  # a row moves whole: every entry of new slot i of a leaf comes from one old slot
  for leaf in jax.tree.leaves(out):
    flat = np.asarray(leaf.reshape(M, -1))
    assert (flat == flat[:, :1]).all()


def test_fixed_key_gives_known_output():
  """Unit u uses permutation(split(key, num_units)[u], m); leaves are numbered in layer order
  (conv/bias, conv/kernel, dense/bias, dense/kernel, head/kernel). Literal values, so that a
  change of derivation (and of reproducibility across versions) is noticed."""
  slots = _slots()
  units = recombination_units(jax.tree.map(lambda l: l[0], slots), ORDER, "leaf")
  sources = _sources(recombine(jax.random.key(0), slots, units))
  ordered = [
    sources["conv"]["bias"],
    sources["conv"]["kernel"],
    sources["dense"]["bias"],
    sources["dense"]["kernel"],
    sources["head"]["kernel"],
  ]
  assert [s.tolist() for s in ordered] == [
    [0, 2, 4, 1, 3],
    [0, 3, 1, 4, 2],
    [4, 3, 1, 0, 2],
    [2, 1, 4, 3, 0],
    [2, 4, 0, 1, 3],
  ]


def test_layer_mode_moves_a_layers_leaves_together():
  slots = _slots()
  units = recombination_units(jax.tree.map(lambda l: l[0], slots), ORDER, "layer")
  assert units == {
    "conv": {"kernel": 0, "bias": 0},
    "dense": {"kernel": 1, "bias": 1},
    "head": {"kernel": 2},
  }
  sources = _sources(recombine(jax.random.key(7), slots, units))
  for layer in ("conv", "dense"):
    np.testing.assert_array_equal(sources[layer]["kernel"], sources[layer]["bias"])


def test_block_fraction_groups_consecutive_leaves_in_layer_order():
  one = jax.tree.map(lambda l: l[0], _slots())
  units = recombination_units(one, ORDER, "block", block_fraction=0.4)  # ceil(0.4 * 5) = 2
  assert units == {
    "conv": {"bias": 0, "kernel": 0},
    "dense": {"bias": 1, "kernel": 1},
    "head": {"kernel": 2},
  }
  assert recombination_units(one, ORDER, "block", 0.0) == recombination_units(one, ORDER, "leaf")
  assert set(jax.tree.leaves(recombination_units(one, ORDER, "block", 1.0))) == {0}


def test_recombination_keeps_the_slot_mean():
  keys = jax.random.split(jax.random.key(1), 3)
  slots = {
    "a": {"w": jax.random.normal(keys[0], (M, 3, 4)), "b": jax.random.normal(keys[1], (M, 4))},
    "z": {"w": jax.random.normal(keys[2], (M, 2))},
  }
  units = recombination_units(jax.tree.map(lambda l: l[0], slots), ("a", "z"), "leaf")
  out = jax.jit(lambda key, stacked: recombine(key, stacked, units))(jax.random.key(9), slots)
  chex.assert_trees_all_close(
    jax.tree.map(lambda l: l.mean(0), out), jax.tree.map(lambda l: l.mean(0), slots), atol=1e-6
  )


def test_mean_pairwise_cosine():
  same = {"w": jnp.ones((3, 4))}
  assert float(mean_pairwise_cosine(same)) == pytest.approx(1.0)
  orthogonal = {"w": jnp.eye(3)}
  assert float(mean_pairwise_cosine(orthogonal)) == pytest.approx(0.0)
  opposite = {"w": jnp.array([[1.0, 0.0], [-1.0, 0.0]])}
  assert float(mean_pairwise_cosine(opposite)) == pytest.approx(-1.0)


def test_pairwise_cosine_of_a_pytree_is_that_of_the_flattened_models():
  stacked = {
    "a": jax.random.normal(jax.random.key(0), (4, 3, 5)),
    "b": {"c": jax.random.normal(jax.random.key(1), (4, 7))},
  }
  flat = jnp.concatenate([leaf.reshape(4, -1) for leaf in jax.tree.leaves(stacked)], axis=1)
  unit = flat / jnp.linalg.norm(flat, axis=1, keepdims=True)
  gram = unit @ unit.T
  expected = (gram.sum() - jnp.trace(gram)) / 12
  assert float(mean_pairwise_cosine(stacked)) == pytest.approx(float(expected), abs=1e-6)
  unit_sum = jax.tree.map(lambda leaf: leaf.sum(0), jax.vmap(unit_vector)(stacked))
  from_sum = mean_pairwise_cosine_from_sum(unit_sum, 4.0)
  assert float(from_sum) == pytest.approx(float(expected), abs=1e-5)


def test_bad_granularity_is_a_clear_error():
  with pytest.raises(ValueError, match="granularity must be one of leaf, layer, block, got 'row'"):
    recombination_units({"a": {"w": jnp.ones(2)}}, ("a",), "row")
