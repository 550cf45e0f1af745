"""A conditional feature generator for data-free distillation (FedGen: Zhu, Hong and Zhou, ICML
2021) and the losses that train and use it. The generator maps noise and a label to the
representation a model's read-out layer (``head``, a dense layer) reads:

    G(z, y) = W2 relu(W1 [z; onehot(y)] + b1) + b2

The server trains it so that the cohort's heads, each weighted by its share of the label,
classify ``G(z, y)`` as ``y``; clients then train their heads on generated features of labels
drawn from the cohort's label distribution, which carries the other clients' knowledge of
labels a client does not hold. Pure functions of explicit parameter pytrees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_lab.ops.losses import per_example_cross_entropy


def init_generator(
  key: jax.Array, noise_dim: int, num_classes: int, hidden: int, feature_dim: int
) -> dict:
  """Generator parameters, weights ``N(0, 1 / fan_in)`` and zero biases."""
  hidden_key, out_key = jax.random.split(key)
  fan_in = noise_dim + num_classes
  return {
    "hidden": {
      "kernel": jax.random.normal(hidden_key, (fan_in, hidden)) / jnp.sqrt(fan_in),
      "bias": jnp.zeros(hidden),
    },
    "out": {
      "kernel": jax.random.normal(out_key, (hidden, feature_dim)) / jnp.sqrt(hidden),
      "bias": jnp.zeros(feature_dim),
    },
  }


def generate(generator: dict, z: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """``G(z, y)`` ``[batch, feature_dim]`` for noise ``z`` ``[batch, noise_dim]`` and integer
  ``labels`` ``[batch]``."""
  inputs = jnp.concatenate([z, jax.nn.one_hot(labels, num_classes, dtype=z.dtype)], axis=-1)
  hidden = jax.nn.relu(inputs @ generator["hidden"]["kernel"] + generator["hidden"]["bias"])
  return hidden @ generator["out"]["kernel"] + generator["out"]["bias"]


def apply_head(head: dict, features: jax.Array) -> jax.Array:
  """A dense read-out layer's logits: ``features @ kernel + bias``."""
  return features @ head["kernel"] + head["bias"]


def sample_labels_and_noise(
  key: jax.Array, label_distribution: jax.Array, batch: int, noise_dim: int
) -> tuple[jax.Array, jax.Array]:
  """``(labels [batch], z [batch, noise_dim])``: labels drawn from ``label_distribution``
  ``[C]`` (non-negative, summing to 1), standard normal noise."""
  label_key, noise_key = jax.random.split(key)
  labels = jax.random.categorical(label_key, jnp.log(label_distribution), shape=(batch,))
  return labels, jax.random.normal(noise_key, (batch, noise_dim))


def label_counts(y: jax.Array, num_examples: jax.Array, num_classes: int) -> jax.Array:
  """``[M, C]``: how many of each client's ``num_examples[k]`` real (leading) examples of
  ``y`` ``[M, N]`` hold each label."""
  real = jnp.arange(y.shape[1])[None, :] < num_examples[:, None]
  return (jax.nn.one_hot(y, num_classes) * real[..., None]).sum(axis=1)


def label_weighted_ensemble_loss(
  head_logits: jax.Array, labels: jax.Array, counts: jax.Array
) -> jax.Array:
  """``sum_k mean_i w[k, y_i] CE(head_logits[k, i], y_i)`` with ``w[k, y] = counts[k, y] /
  sum_k counts[k, y]``: each label is taught by the clients that hold it, in proportion to
  how many of its examples they hold (a label no client holds teaches nothing).

  Args:
    head_logits: ``[M, B, C]``, client ``k``'s logits for generated sample ``i``.
    labels: ``[B]`` the labels the samples were generated for.
    counts: ``[M, C]`` label counts of the clients (``label_counts``).
  """
  weights = counts / jnp.maximum(counts.sum(axis=0, keepdims=True), 1.0)  # [M, C]
  losses = jax.vmap(per_example_cross_entropy, in_axes=(0, None))(head_logits, labels)  # [M, B]
  return (weights[:, labels] * losses).mean(axis=1).sum()
