"""The pieces of asynchronous aggregation (FedBuff, FedAsync): staleness discounts, the order
in which in-flight results arrive, and the server's mixing weights. Pure ``jnp`` functions.

The server keeps ``C`` slots of clients in flight; slot ``i`` holds a result that reaches the
server at simulated time ``finish[i]``, computed from the model of server version
``version[i]``. A result arriving while the server is at version ``v`` has staleness
``tau = v - version[i]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def polynomial_staleness(staleness: jax.Array, exponent: float) -> jax.Array:
  """``s(tau) = (1 + tau) ** -exponent``: FedBuff's discount with ``exponent = 0.5``
  (Nguyen et al. 2022, ``1 / sqrt(1 + tau)``) and FedAsync's polynomial one (Xie et al.
  2019, ``(1 + tau) ** -a``); ``exponent = 0``: no discount."""
  return (1.0 + staleness.astype(jnp.float32)) ** (-exponent)


def earliest_slots(finish: jax.Array, count: int) -> jax.Array:
  """``[count]`` int32: the slots whose results arrive first, in order of arrival (ties by
  slot index, so the order is a pure function of ``finish``)."""
  return jnp.argsort(finish, stable=True)[:count].astype(jnp.int32)


def sequential_mixing(rates: jax.Array) -> tuple[jax.Array, jax.Array]:
  """FedAsync's updates ``x <- (1 - b_i) x + b_i y_i`` applied for ``i = 1 .. K`` in order,
  written as one mix: ``x_K = x + sum_i g_i (y_i - x)`` with

    ``g_i = b_i * prod_{j > i} (1 - b_j)``,  so ``x_K = x + c (sum_i g_i y_i / c - x)``,
    ``c = sum_i g_i = 1 - prod_i (1 - b_i)``.

  Args:
    rates: ``[K]`` the mixing rates ``b_i`` in [0, 1], in order of arrival (0: a result that
      brought nothing).

  Returns:
    ``(g [K], c)``: the weights of the results and their sum.
  """
  keep_after = jnp.cumprod((1.0 - rates)[::-1])[::-1]  # prod_{j >= i} (1 - b_j)
  later = jnp.concatenate([keep_after[1:], jnp.ones((1,), rates.dtype)])
  weights = rates * later
  return weights, 1.0 - keep_after[0]
