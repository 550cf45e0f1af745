"""2x2 max pooling (stride 2, 'VALID') with a backward pass that is a mask, not a scatter.

``nn.max_pool`` is ``lax.reduce_window``; its JVP gathers each window's arg-max as a
reduce-window over (value, index) pairs and its transpose scatters the gradient back. On
XLA:CPU those took about a third of a local step of the FedMR CNN (batch 50) inside the rolled
step loop. Here the forward pass is a reshape and a max over the two window axes,

    y[b, i, j, c] = max_{u, v in {0, 1}} x[b, 2i + u, 2j + v, c]

and the backward pass is elementwise:

    dx[b, 2i + u, 2j + v, c] = dy[b, i, j, c] * [x[b, 2i + u, 2j + v, c] == y[b, i, j, c]]

(rows and columns past an even size, which no window covers, get 0). The values are
``nn.max_pool``'s. The gradients are too, except where a window's maximum is tied: every tied
input receives ``dy`` here, the first one only in ``nn.max_pool``. The project's models pool
after a ReLU, where tied maxima are (but for a measure-zero event) zeros whose gradient the ReLU
discards, so their gradients are ``nn.max_pool``'s exactly (``tests/test_models.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _windows(x):
  """``[b, h // 2, 2, w // 2, 2, c]``: ``x`` cropped to even size, windows on axes 2 and 4."""
  b, h, w, c = x.shape
  return x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x):
  """``nn.max_pool(x, (2, 2), strides=(2, 2))`` for NHWC ``x``, with the mask backward pass of
  the module docstring."""
  return _windows(x).max(axis=(2, 4))


def _forward(x):
  y = max_pool_2x2(x)
  return y, (x, y)


def _backward(residuals, dy):
  x, y = residuals
  windows = _windows(x)
  spread = jnp.where(windows == y[:, :, None, :, None], dy[:, :, None, :, None], 0)
  b, h, w, c = x.shape
  d_x = spread.reshape(b, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(d_x, [(0, 0), (0, h % 2), (0, w % 2), (0, 0)]),)


max_pool_2x2.defvjp(_forward, _backward)
