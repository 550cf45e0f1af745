"""Lazy influence approximation (Rokvic et al., arXiv 2205.11518; pFedLIA, arXiv 2505.02540).

Client ``j`` trains from its starting model for a few local epochs to ``theta_j``; client ``i``
scores it on its own held-out split against its own starting model ``theta0_i``:

- ``loss``:      ``I[i, j] = L_i(theta0_i) - L_i(theta_j)`` (positive: j's update helps i)
- ``accuracy``:  ``I[i, j] = A_i(theta_j) - A_i(theta0_i)``
- ``vote``:      ``I[i, j] = sign(L_i(theta0_i) - L_i(theta_j))`` in {-1, +1} (0 counts as -1),
  optionally privatized by randomized response: each vote is kept with probability
  ``e^eps / (1 + e^eps)`` and flipped otherwise (``eps``-local differential privacy).

With one shared ``theta0`` this is the lazy influence of the papers. The ``N x N`` matrix is a
double vmap (scorers x models), mapped over scorers in chunks so that memory follows
``chunk_size * N`` evaluations. Cost: ``N * N + N`` model evaluations on validation splits;
in the decentralized protocol every model travels to every other client.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fedjax_lab.ops.losses import masked_mean, per_example_correct, per_example_cross_entropy

INFLUENCE_KINDS = ("loss", "accuracy", "vote")


def validation_sizes(num_examples: jax.Array, fraction: float) -> jax.Array:
  """Held-out examples per client: ``round(fraction * n)`` clipped to ``[1, n - 1]``
  (0 for clients with fewer than 2 examples, which then cannot score)."""
  size = jnp.clip(jnp.round(fraction * num_examples).astype(jnp.int32), 1, num_examples - 1)
  return jnp.where(num_examples >= 2, size, 0)


def real_rows_shuffled(key: jax.Array, count: jax.Array, max_rows: int) -> jax.Array:
  """``[max_rows]`` positions: a uniformly random order of one client's ``count`` real rows,
  then its padding rows in place. Indexing a client's padded arrays with it and holding out
  the first ``k`` rows draws a random held-out split of ``k`` real examples."""
  scores = jnp.where(jnp.arange(max_rows) < count, jax.random.uniform(key, (max_rows,)), 2.0)
  return jnp.argsort(scores)


def drop_leading(rows: jax.Array, count: jax.Array) -> jax.Array:
  """One client's padded array ``[max, ...]`` with its first ``count`` rows moved to the end:
  the examples after the held-out ones come first, so ``n - count`` of them are real."""
  positions = (jnp.arange(rows.shape[0]) + count) % rows.shape[0]
  return rows[positions]


def masked_metrics(apply_fn: Callable) -> Callable:
  """``metrics(params, x, y, count) -> (mean loss, accuracy)`` over the first ``count`` rows."""

  def metrics(params, x, y, count):
    logits = apply_fn(params, x)
    mask = jnp.arange(x.shape[0]) < count
    return (
      masked_mean(per_example_cross_entropy(logits, y), mask),
      masked_mean(per_example_correct(logits, y), mask),
    )

  return metrics


def influence_matrix(
  metrics: Callable,
  start_models,
  trained_models,
  val_x: jax.Array,
  val_y: jax.Array,
  val_sizes: jax.Array,
  *,
  kind: str = "loss",
  chunk_size: int = 16,
) -> jax.Array:
  """``I [scorers, models]`` as in the module docstring (votes before randomized response).

  ``start_models`` / ``trained_models``: stacked ``[N, ...]``; ``val_x/val_y [N, max, ...]``
  hold each client's held-out split in the first ``val_sizes[i]`` rows.
  """
  if kind not in INFLUENCE_KINDS:
    raise ValueError(f"influence kind {kind!r} is unknown; allowed: {', '.join(INFLUENCE_KINDS)}")

  def score_row(args):
    start, x, y, count = args
    base_loss, base_accuracy = metrics(start, x, y, count)
    losses, accuracies = jax.vmap(metrics, in_axes=(0, None, None, None))(
      trained_models, x, y, count
    )
    if kind == "accuracy":
      return accuracies - base_accuracy
    gain = base_loss - losses
    return gain if kind == "loss" else jnp.where(gain > 0, 1.0, -1.0)

  return jax.lax.map(score_row, (start_models, val_x, val_y, val_sizes), batch_size=chunk_size)


def randomized_response(key: jax.Array, votes: jax.Array, epsilon: float) -> jax.Array:
  """Each +-1 vote kept with probability ``e^eps / (1 + e^eps)``, flipped otherwise."""
  keep_probability = jnp.exp(epsilon) / (1.0 + jnp.exp(epsilon))
  keep = jax.random.uniform(key, votes.shape) < keep_probability
  return jnp.where(keep, votes, -votes)


def influence_cost(num_clients: int, model_bytes: int) -> dict[str, int]:
  """Model evaluations of one influence phase, and bytes moved if every client scores every
  model itself (decentralized: ``N (N - 1)`` model transfers, then ``N^2`` float32 scores to
  the server for central clustering)."""
  return {
    "influence_model_evaluations": num_clients * num_clients + num_clients,
    "influence_bytes_models": num_clients * (num_clients - 1) * model_bytes,
    "influence_bytes_scores": num_clients * num_clients * 4,
  }
