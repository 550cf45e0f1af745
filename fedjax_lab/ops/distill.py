"""Knowledge-distillation losses (Hinton et al. 2015), pure and vmap-safe.

With temperature ``T``, ``p_T(z) = softmax(z / T)``. The per-example loss is
``T^2 * KL(p_T(teacher) || p_T(student)) = T^2 * sum_c p_c (log p_c - log q_c)``; the ``T^2``
keeps its gradients on the scale of the cross-entropy as ``T`` grows. Logits may carry token
axes between the batch and the class axis; they are averaged per example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_lab.ops.losses import masked_mean


def per_example_kl(
  student_logits: jax.Array, teacher_probs: jax.Array, temperature: float
) -> jax.Array:
  """``[batch]``: ``T^2 * KL(teacher_probs || softmax(student / T))``; the teacher is a
  distribution (no gradient flows into it)."""
  teacher_probs = jax.lax.stop_gradient(teacher_probs)
  log_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  log_teacher = jnp.log(jnp.maximum(teacher_probs, 1e-30))
  kl = (teacher_probs * (log_teacher - log_student)).sum(-1)
  return temperature**2 * kl.reshape(kl.shape[0], -1).mean(axis=1)


def kl_distillation(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  temperature: float,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Masked mean over the batch of ``T^2 * KL(p_T(teacher) || p_T(student))``."""
  losses = per_example_kl(
    student_logits, jax.nn.softmax(teacher_logits / temperature, axis=-1), temperature
  )
  return losses.mean() if mask is None else masked_mean(losses, mask)


def ensemble_probs(
  teacher_logits: jax.Array, temperature: float, weights: jax.Array | None = None
) -> jax.Array:
  """The ensemble teacher ``sum_m w_m p_T(z_m) / sum_m w_m`` over the leading axis of
  ``teacher_logits [teachers, batch, ..., classes]`` (uniform weights by default)."""
  probs = jax.nn.softmax(teacher_logits / temperature, axis=-1)
  if weights is None:
    return probs.mean(0)
  weights = jnp.asarray(weights, probs.dtype)
  return jnp.tensordot(weights / jnp.maximum(weights.sum(), 1e-12), probs, axes=1)


def ensemble_distillation(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  temperature: float,
  weights: jax.Array | None = None,
) -> jax.Array:
  """Mean over the batch of ``T^2 * KL(ensemble_T(teachers) || p_T(student))``."""
  return per_example_kl(
    student_logits, ensemble_probs(teacher_logits, temperature, weights), temperature
  ).mean()


def server_distillation_targets(
  cross_logits: jax.Array, weights: jax.Array, temperature: float, mode: str
) -> tuple[jax.Array, jax.Array]:
  """Targets for distilling every client model ``j`` on every client ``k``'s pseudo-samples.

  ``cross_logits [M, M, P, C]``: entry ``[m, k]`` is model ``m`` on client ``k``'s ``P``
  pseudo-samples. Returns ``(targets [M(j), M(k), P, C], sample_weights [M(j), M(k)])``:

  - ``pairwise``: student ``j`` learns client ``k``'s model on ``k``'s own pseudo-samples,
    ``targets[j, k] = p_T(cross_logits[k, k])``;
  - ``ensemble``: on ``k``'s pseudo-samples it learns the ensemble of all models but its own,
    ``targets[j, k] = sum_{m != j} w_m p_T(cross_logits[m, k]) / sum_{m != j} w_m``.

  ``sample_weights[j, k] = w_k`` for ``k != j`` and 0 on the diagonal (a model is not
  distilled on its own pseudo-samples).
  """
  num_models = cross_logits.shape[0]
  probs = jax.nn.softmax(cross_logits / temperature, axis=-1)
  weights = jnp.asarray(weights, probs.dtype)
  others = 1.0 - jnp.eye(num_models, dtype=probs.dtype)
  if mode == "pairwise":
    own = probs[jnp.arange(num_models), jnp.arange(num_models)]  # [M, P, C]
    targets = jnp.broadcast_to(own[None], (num_models,) + own.shape)
  elif mode == "ensemble":
    total = jnp.einsum("m,mkpc->kpc", weights, probs)
    without_j = total[None] - weights[:, None, None, None] * probs  # [j, k, P, C]
    targets = without_j / jnp.maximum(weights.sum() - weights, 1e-12)[:, None, None, None]
  else:
    raise ValueError(f"distillation mode {mode!r} is unknown; allowed: pairwise, ensemble")
  return targets, others * weights[None, :]
