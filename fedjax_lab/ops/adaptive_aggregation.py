"""Adaptive local aggregation (FedALA's ALA; Zhang et al. 2023): a client's start model built
from the global model ``g`` and its own last model ``l``, element by element.

The lower layers take the global model; the top ``p`` layers (``top_layers``) are
``l + (g - l) * W`` with weights ``W`` in [0, 1] learned on the client's data
(``blend``). The gradient of a loss ``L`` of the blended model with respect to ``W`` is
``dL/dtheta * (g - l)``, so plain SGD on ``W`` followed by clipping to [0, 1]
(``unit_box_sgd``) is ALA's update ``W <- clip(W - eta * dL/dtheta * (g - l), 0, 1)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.ops.personalization import PathPredicate


def top_layers(layer_groups: tuple[str, ...], count: int) -> PathPredicate:
  """The last ``count`` of a model's ``layer_groups`` (its top-level modules input to output,
  ``Model.layer_groups``: the read-out ``head`` last), as a path predicate for
  ``ops.personalization.split``."""
  top = set(layer_groups[-count:])
  return lambda path: path.split("/")[0] in top


def blend(global_part: dict, local_part: dict, weights: dict) -> dict:
  """``l + (g - l) * W`` leaf by leaf: ``W = 1`` is the global model, ``W = 0`` the local."""
  return jax.tree.map(lambda g, l, w: l + (g - l) * w, global_part, local_part, weights)


def unit_box_sgd(learning_rate: float) -> optax.GradientTransformation:
  """SGD with step ``learning_rate`` whose result is clipped to [0, 1] leaf by leaf (the
  update is ``clip(W - eta * grad, 0, 1) - W``)."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(grads, state, params):
    updates = jax.tree.map(
      lambda w, grad: jnp.clip(w - learning_rate * grad, 0.0, 1.0) - w, params, grads
    )
    return updates, state

  return optax.GradientTransformation(init, update)


def settled(recent_losses: jax.Array, epochs_done: jax.Array, threshold: float) -> jax.Array:
  """ALA's end of the first (start) phase: the standard deviation of the last
  ``len(recent_losses)`` epochs' losses is under ``threshold`` (False until that many epochs
  have run)."""
  return (epochs_done >= recent_losses.shape[0]) & (jnp.std(recent_losses) < threshold)
