"""Clustering and cluster-aggregation ops against scikit-learn and explicit loops."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from fedjax_lab.ops import cluster
from fedjax_lab.ops.aggregate import cluster_mean, neighbourhood_mean

BLOCKS = np.repeat(np.arange(3), 5)


def _planted_similarity(seed=0, noise=0.3):
  rng = np.random.default_rng(seed)
  return jnp.asarray(
    np.where(BLOCKS[:, None] == BLOCKS[None], 1.0, -1.0) + noise * rng.normal(size=(15, 15)),
    jnp.float32,
  )


@pytest.mark.parametrize("linkage", cluster.LINKAGES)
def test_agglomerative_matches_scikit_learn(linkage):
  rng = np.random.default_rng(3)
  run = jax.jit(lambda s: cluster.agglomerative(s, num_clusters=4, linkage=linkage))
  for _ in range(3):
    points = rng.normal(size=(14, 3))
    distance = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    labels = np.asarray(run(jnp.asarray(-distance, jnp.float32)))
    reference = AgglomerativeClustering(
      n_clusters=4, metric="precomputed", linkage=linkage
    ).fit_predict(distance)
    assert adjusted_rand_score(reference, labels) == 1.0
    np.testing.assert_array_equal(labels, np.asarray(cluster.canonical_labels(labels)))


def test_agglomerative_threshold_recovers_blocks_and_stops():
  labels = cluster.agglomerative(_planted_similarity(), threshold=0.0)
  np.testing.assert_array_equal(labels, BLOCKS * 5)  # canonical: smallest member index
  singletons = cluster.agglomerative(_planted_similarity(), threshold=5.0)
  np.testing.assert_array_equal(singletons, np.arange(15))


def test_agglomerative_only_merges_members():
  members = jnp.asarray(BLOCKS != 1)
  labels = np.asarray(cluster.agglomerative(_planted_similarity(), num_clusters=1, members=members))
  np.testing.assert_array_equal(labels[BLOCKS == 1], np.arange(5, 10))
  assert set(labels[BLOCKS != 1]) == {0}


def test_spectral_recovers_planted_blocks():
  labels = cluster.spectral(jax.random.key(0), _planted_similarity(noise=0.5), 3)
  assert adjusted_rand_score(BLOCKS, np.asarray(labels)) == 1.0


def test_neighbourhoods_and_their_components():
  scores = _planted_similarity()
  positive = np.asarray(cluster.neighbourhoods(scores))
  np.testing.assert_array_equal(positive, BLOCKS[:, None] == BLOCKS[None])
  top = np.asarray(cluster.neighbourhoods(scores, rule="top_k", top_k=2))
  assert (top.sum(1) == 3).all() and top[np.arange(15), np.arange(15)].all()
  assert (top <= positive).all()
  np.testing.assert_array_equal(cluster.neighbourhood_labels(jnp.asarray(positive)), BLOCKS * 5)


def test_cluster_mean_and_neighbourhood_mean_match_loops():
  rng = np.random.default_rng(0)
  stacked = {
    "w": jnp.asarray(rng.normal(size=(6, 3, 2)), jnp.float32),
    "b": jnp.asarray(rng.normal(size=(6,)), jnp.float32),
  }
  weights = jnp.asarray([1.0, 2.0, 0.0, 4.0, 1.0, 3.0])
  labels = jnp.asarray([0, 0, 2, 2, 0, 5])
  adjacency = jnp.asarray(rng.random((6, 6)) < 0.5) | jnp.eye(6, dtype=bool)
  by_cluster = cluster_mean(stacked, weights, labels)
  by_neighbours = neighbourhood_mean(stacked, weights, adjacency)
  for i in range(6):
    same = np.asarray(labels == labels[i]) * np.asarray(weights)
    mixing = np.asarray(adjacency[i]) * np.asarray(weights)
    for name, leaf in stacked.items():
      expected = np.tensordot(same / same.sum(), np.asarray(leaf), axes=1)
      np.testing.assert_allclose(by_cluster[name][i], expected, rtol=1e-5, atol=1e-6)
      expected = np.tensordot(mixing / mixing.sum(), np.asarray(leaf), axes=1)
      np.testing.assert_allclose(by_neighbours[name][i], expected, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_equal_shapes(by_cluster, stacked)
