"""Clustering clients from a similarity matrix, jittable (no host round trip).

Labels are canonical: a client's label is the smallest client index in its cluster, so labels
lie in ``[0, N)`` and feed ``jax.ops.segment_sum`` with ``N`` segments directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LINKAGES = ("average", "complete", "single")


def symmetrize(scores: jax.Array) -> jax.Array:
  """``(S + S^T) / 2``."""
  return 0.5 * (scores + scores.T)


def canonical_labels(labels: jax.Array) -> jax.Array:
  """Relabel so that each cluster is named by its smallest member index."""
  num_clients = labels.shape[0]
  smallest = jax.ops.segment_min(jnp.arange(num_clients), labels, num_clients)
  return smallest[labels].astype(jnp.int32)


def count_clusters(labels: jax.Array, members: jax.Array | None = None) -> jax.Array:
  """Number of distinct canonical labels (among ``members`` if given)."""
  is_representative = labels == jnp.arange(labels.shape[0])
  if members is not None:
    is_representative &= members
  return is_representative.sum()


def agglomerative(
  similarity: jax.Array,
  *,
  num_clusters: int = 0,
  threshold: float = 0.0,
  linkage: str = "average",
  members: jax.Array | None = None,
) -> jax.Array:
  """Bottom-up clustering of ``similarity [N, N]`` (larger is closer).

  Start from singletons; repeatedly merge the two clusters of highest linkage similarity
  (``average``: mean over cross pairs, as scipy's UPGMA; ``complete``: minimum; ``single``:
  maximum) while more than ``num_clusters`` remain, or, with ``num_clusters = 0``, while the
  best linkage similarity is ``>= threshold``. Only ``members`` (default: all) take part;
  the others keep their own labels. Returns canonical labels ``[N]``.
  """
  if linkage not in LINKAGES:
    raise ValueError(f"linkage {linkage!r} is unknown; allowed: {', '.join(LINKAGES)}")
  size = similarity.shape[0]
  off_diagonal = ~jnp.eye(size, dtype=bool)
  alive = jnp.ones(size, bool) if members is None else members.astype(bool)

  def merge(_, carry):
    linkage_sim, alive, labels, sizes = carry
    candidates = jnp.where(alive[:, None] & alive[None, :] & off_diagonal, linkage_sim, -jnp.inf)
    flat = jnp.argmax(candidates)
    row, column = flat // size, flat % size
    keep, gone = jnp.minimum(row, column), jnp.maximum(row, column)
    best = candidates[row, column]
    if num_clusters > 0:
      proceed = alive.sum() > num_clusters
    else:
      proceed = best >= threshold
    proceed &= jnp.isfinite(best)
    if linkage == "average":
      merged = (sizes[keep] * linkage_sim[keep] + sizes[gone] * linkage_sim[gone]) / (
        sizes[keep] + sizes[gone]
      )
    elif linkage == "complete":
      merged = jnp.minimum(linkage_sim[keep], linkage_sim[gone])
    else:
      merged = jnp.maximum(linkage_sim[keep], linkage_sim[gone])
    new = (
      linkage_sim.at[keep, :].set(merged).at[:, keep].set(merged),
      alive.at[gone].set(False),
      jnp.where(labels == gone, keep, labels),
      sizes.at[keep].add(sizes[gone]),
    )
    return jax.tree.map(lambda n, o: jnp.where(proceed, n, o), new, carry)

  carry = (
    similarity.astype(jnp.float32),
    alive,
    jnp.arange(size, dtype=jnp.int32),
    jnp.ones(size, jnp.float32),
  )
  _, _, labels, _ = jax.lax.fori_loop(0, size - 1, merge, carry)
  return labels


def kmeans(key: jax.Array, points: jax.Array, num_clusters: int, iterations: int = 50) -> jax.Array:
  """Lloyd's k-means on ``points [N, d]`` from a k-means++ start; returns labels ``[N]``."""

  def add_center(centers_and_count, center_key):
    centers, count = centers_and_count
    distances = ((points[:, None] - centers[None]) ** 2).sum(-1)
    valid = jnp.arange(num_clusters) < count
    nearest = jnp.min(jnp.where(valid[None], distances, jnp.inf), axis=1)
    choice = jax.random.categorical(center_key, jnp.log(nearest + 1e-12))
    return (centers.at[count].set(points[choice]), count + 1), None

  first_key, rest_key = jax.random.split(key)
  first = points[jax.random.randint(first_key, (), 0, points.shape[0])]
  centers = jnp.zeros((num_clusters, points.shape[1]), points.dtype).at[0].set(first)
  (centers, _), _ = jax.lax.scan(
    add_center, (centers, 1), jax.random.split(rest_key, num_clusters - 1)
  )

  def lloyd(_, centers):
    labels = jnp.argmin(((points[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    sums = jax.ops.segment_sum(points, labels, num_clusters)
    counts = jax.ops.segment_sum(jnp.ones(points.shape[0]), labels, num_clusters)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts[:, None], 1), centers)

  centers = jax.lax.fori_loop(0, iterations, lloyd, centers)
  return jnp.argmin(((points[:, None] - centers[None]) ** 2).sum(-1), axis=1)


def spectral(key: jax.Array, similarity: jax.Array, num_clusters: int) -> jax.Array:
  """Normalized spectral clustering (Ng, Jordan and Weiss 2001) of the affinity
  ``W = max(S, 0)`` (diagonal zeroed): the ``k`` leading eigenvectors of
  ``D^-1/2 W D^-1/2``, rows normalized to unit length, then k-means. Canonical labels."""
  affinity = jnp.maximum(similarity, 0.0) * (1.0 - jnp.eye(similarity.shape[0]))
  inv_sqrt_degree = 1.0 / jnp.sqrt(jnp.maximum(affinity.sum(1), 1e-12))
  normalized = affinity * inv_sqrt_degree[:, None] * inv_sqrt_degree[None, :]
  _, vectors = jnp.linalg.eigh(normalized)
  embedding = vectors[:, -num_clusters:]
  embedding = embedding / jnp.maximum(jnp.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
  return canonical_labels(kmeans(key, embedding, num_clusters))


def neighbourhoods(scores: jax.Array, *, rule: str = "positive", top_k: int = 5) -> jax.Array:
  """Boolean ``A [N, N]``: client ``i``'s collaborators, row ``i`` of ``scores`` read as how
  much each client helps ``i``: every ``j`` with ``S[i, j] > 0`` (``positive``) or the
  ``top_k`` highest-scoring others (``top_k``). Every client collaborates with itself."""
  size = scores.shape[0]
  others = jnp.where(jnp.eye(size, dtype=bool), -jnp.inf, scores)
  if rule == "positive":
    chosen = others > 0
  elif rule == "top_k":
    _, best = jax.lax.top_k(others, min(top_k, size - 1))
    chosen = jnp.zeros((size, size), bool).at[jnp.arange(size)[:, None], best].set(True)
  else:
    raise ValueError(f"neighbourhood rule {rule!r} is unknown; allowed: positive, top_k")
  return chosen | jnp.eye(size, dtype=bool)


def neighbourhood_labels(adjacency: jax.Array) -> jax.Array:
  """A label per client for reporting: the connected components of ``A | A^T`` (canonical)."""
  size = adjacency.shape[0]
  linked = adjacency | adjacency.T

  def spread(_, labels):
    return jnp.min(jnp.where(linked, labels[None, :], size), axis=1)

  return jax.lax.fori_loop(0, size, spread, jnp.arange(size, dtype=jnp.int32))
