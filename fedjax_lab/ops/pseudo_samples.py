"""Server-side pseudo-samples for noise distillation (FedSND): inputs that start as Gaussian
noise with assigned labels and are adapted by gradient steps on the inputs until a client's
model classifies them as their labels:

``x <- x - lr * grad_x [ CE(f_theta(x), y) + lambda_tv * TV(x) ]`` (Adam on ``x``),

with the anisotropic total variation ``TV(x) = mean |x[h+1, w] - x[h, w]| + mean
|x[h, w+1] - x[h, w]|`` for images ``[..., H, W, C]`` (0 for other inputs) as an optional
smoothness prior.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.ops.losses import per_example_cross_entropy


def balanced_labels(count: int, num_classes: int) -> jax.Array:
  """``[count]`` labels cycling through the classes: ``y_p = p mod C``."""
  return jnp.arange(count, dtype=jnp.int32) % num_classes


def total_variation(x: jax.Array) -> jax.Array:
  """Mean absolute difference of vertical and horizontal neighbours (images ``[B, H, W, C]``)."""
  if x.ndim != 4:
    return jnp.zeros((), x.dtype)
  return jnp.abs(x[:, 1:] - x[:, :-1]).mean() + jnp.abs(x[:, :, 1:] - x[:, :, :-1]).mean()


def pseudo_sample_loss(
  apply_fn: Callable, params, x: jax.Array, y: jax.Array, tv_weight: float = 0.0
) -> jax.Array:
  """``mean CE(f_params(x), y) + tv_weight * TV(x)``."""
  return per_example_cross_entropy(apply_fn(params, x), y).mean() + tv_weight * total_variation(x)


def refine_pseudo_samples(
  apply_fn: Callable,
  params,
  x: jax.Array,
  y: jax.Array,
  *,
  steps: int,
  learning_rate: float,
  tv_weight: float = 0.0,
  unroll: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """``steps`` Adam steps on the inputs ``x`` (the model is frozen). Returns the new inputs
  and the loss before each step ``[steps]``. ``unroll``: unroll the step loop (convolutions on
  XLA:CPU run several times faster outside a loop, see engine/local.py)."""
  optimizer = optax.adam(learning_rate)
  loss_and_grad = jax.value_and_grad(
    lambda inputs: pseudo_sample_loss(apply_fn, params, inputs, y, tv_weight)
  )

  def step(carry, _):
    inputs, opt_state = carry
    loss, grads = loss_and_grad(inputs)
    updates, opt_state = optimizer.update(grads, opt_state, inputs)
    return (optax.apply_updates(inputs, updates), opt_state), loss

  (x, _), losses = jax.lax.scan(
    step, (x, optimizer.init(x)), None, length=steps, unroll=bool(unroll)
  )
  return x, losses
