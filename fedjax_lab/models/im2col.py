"""Convolutions as matrix products (im2col), for any Flax model, without changing its params.

``conv(x, W) = patches(x) @ reshape(W)``: ``patches`` gathers each output position's
``kh x kw x c_in`` input window into a row by concatenating ``kh kw`` shifted, strided slices of
the padded input along the channels, and the kernel ``[kh, kw, c_in, c_out]`` becomes a
``[kh kw c_in, c_out]`` matrix. (``lax.conv_general_dilated_patches`` builds the same patches
with a one-hot convolution of ``kh kw c_in`` output channels: 12x slower than ``lax.conv`` for
the FEMNIST CNN on XLA:CPU, so it is not used.)
Under ``vmap`` over per-client kernels the patches fold the client axis into the batch and the
product becomes one batched matrix product, where ``vmap`` of ``lax.conv`` lowers to a grouped
convolution that XLA:CPU runs slowly (docs/performance.md). The price is memory: the patches
are ``kh kw`` times larger than the input.

``apply_im2col(module, variables, x)`` runs ``module.apply`` with every ``nn.Conv`` call
intercepted and computed this way from the conv's own parameters.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


def _pairs(value, count):
  if value is None:
    return (1,) * count
  return (value,) * count if isinstance(value, int) else tuple(value)


def _padding(padding, count):
  if isinstance(padding, str):
    return padding
  if isinstance(padding, int):
    return [(padding, padding)] * count
  return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _explicit_padding(padding, kernel, strides, spatial):
  """``[(low, high)] * 2`` for the padding ``nn.Conv`` accepts (SAME / VALID / ints / pairs)."""
  if padding == "VALID":
    return [(0, 0)] * 2
  if padding == "SAME":
    return lax.padtype_to_pads(spatial, kernel, strides, "SAME")
  return _padding(padding, 2)


def conv_as_matmul(conv: nn.Conv, x):
  """What ``conv(x)`` computes (NHWC, no dilation, one feature group), as patches @ kernel."""
  kernel = conv.get_variable("params", "kernel")
  kh, kw, c_in, c_out = kernel.shape
  sh, sw = _pairs(conv.strides, 2)
  pads = _explicit_padding(conv.padding, (kh, kw), (sh, sw), x.shape[1:3])
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  patches = jnp.concatenate(
      [x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
       for i in range(kh) for j in range(kw)], axis=-1)     # features ordered (kh, kw, c_in)
  y = patches @ kernel.reshape(kh * kw * c_in, c_out)
  if conv.use_bias:
    y = y + conv.get_variable("params", "bias")
  return y


def _intercept(next_fun, args, kwargs, context):
  conv = context.module
  if (isinstance(conv, nn.Conv) and context.method_name == "__call__"
      and conv.feature_group_count == 1 and _pairs(conv.kernel_dilation, 2) == (1, 1)
      and _pairs(conv.input_dilation, 2) == (1, 1) and not kwargs):
    return conv_as_matmul(conv, *args)
  return next_fun(*args, **kwargs)


def apply_im2col(module: nn.Module, variables, x):
  """``module.apply(variables, x)`` with its 2-D convolutions computed as matrix products."""
  with nn.intercept_methods(_intercept):
    return module.apply(variables, x)
