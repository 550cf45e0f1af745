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
are ``kh kw`` times larger than the input. The patches have a custom VJP (see
``_stacked_windows``), so these convolutions support reverse-mode autodiff only (no ``jax.jvp``
through them; ``conv="xla"`` for forward mode).

``conv_with_explicit_vjp`` keeps XLA's forward convolution but defines the backward pass
itself: the kernel gradient as the im2col product ``patches(x)^T @ dy``, the input gradient as a
forward convolution of the (stride-dilated, padded) output gradient with the spatially flipped,
in/out-transposed kernel. Inside a rolled loop (``lax.scan``, ``while``) XLA:CPU runs its own
backward convolutions many times slower than unrolled (jax-ml/jax#12868; measured: the kernel
gradient of the FEMNIST CNN's second conv 77-80 ms a step in a scan against 1.1 ms unrolled);
written this way both are as fast in the loop as outside it.

``apply_convolutions(module, variables, x, conv)`` runs ``module.apply`` with every ``nn.Conv``
call intercepted and computed by ``conv``: ``im2col`` (forward and backward as matrix products)
or ``explicit_vjp``, from the conv's own parameters.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")


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


def _taps(start: int, stride: int, count: int) -> slice:
  """Positions ``start, start + stride, ...``: the input rows (or columns) that ``count``
  output positions read at window offset ``start``."""
  return slice(start, start + stride * (count - 1) + 1, stride)


def _output_size(shape, window) -> tuple[int, int]:
  kh, kw, sh, sw = window
  return (shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1


def _window_slices(x, window: tuple[int, int, int, int]):
  """The ``kh kw`` shifted, strided slices of ``x`` (``window = (kh, kw, sh, sw)``): slice
  ``(i, j)`` (row-major) holds, at each output position, the window's entry ``(i, j)``."""
  kh, kw, sh, sw = window
  out_h, out_w = _output_size(x.shape, window)
  return [x[:, _taps(i, sh, out_h), _taps(j, sw, out_w)] for i in range(kh) for j in range(kw)]


def _concatenated_windows(x, window):
  return jnp.concatenate(_window_slices(x, window), axis=-1)


def _patches(x, kh: int, kw: int, sh: int, sw: int):
  """``[n, out_h, out_w, kh kw c]``: each output position's window of the padded ``x``, features
  ordered ``(kh, kw, c)``; see ``_stacked_windows``."""
  return _stacked_windows(x, (kh, kw, sh, sw), x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _stacked_windows(x, window: tuple[int, int, int, int], shape: tuple[int, ...]):
  """``_concatenated_windows(x, window)``, built as two stacks on axes that are not the minor
  one, of ``kw`` then ``kh`` slices, so that XLA:CPU fuses the slices into the concatenation
  and writes the patches once. (It fuses neither a concatenation along the minor axis nor one
  of more than 8 operands: the plain concatenation of ``kh kw`` slices along the channels wrote
  every slice, then copied them all.) The backward pass is the transpose of the plain
  concatenation, which XLA fuses into the op consuming the input gradient; autodiff of the
  stacks would write partial sums instead. ``shape`` is ``x.shape`` (static)."""
  kh, kw, sh, sw = window
  out_h, out_w = _output_size(shape, window)
  columns = jnp.stack([x[:, :, _taps(j, sw, out_w)] for j in range(kw)], axis=3)
  rows = jnp.stack([columns[:, _taps(i, sh, out_h)] for i in range(kh)], axis=3)
  return rows.reshape(shape[0], out_h, out_w, kh * kw * shape[3])


def _stacked_windows_forward(x, window, shape):
  return _stacked_windows(x, window, shape), None


def _stacked_windows_backward(window, shape, _, d_patches):
  concatenate = functools.partial(_concatenated_windows, window=window)
  return jax.linear_transpose(concatenate, jax.ShapeDtypeStruct(shape, d_patches.dtype))(d_patches)


_stacked_windows.defvjp(_stacked_windows_forward, _stacked_windows_backward)


def _rows(x):
  """``x`` as a matrix with one row per position: ``[n out_h out_w, features]``."""
  return x.reshape(-1, x.shape[-1])


def conv_as_matmul(conv: nn.Conv, x):
  """What ``conv(x)`` computes (NHWC, no dilation, one feature group), as patches @ kernel."""
  kernel = conv.get_variable("params", "kernel")
  kh, kw, c_in, c_out = kernel.shape
  sh, sw = _pairs(conv.strides, 2)
  pads = _explicit_padding(conv.padding, (kh, kw), (sh, sw), x.shape[1:3])
  patches = _patches(jnp.pad(x, [(0, 0), *pads, (0, 0)]), kh, kw, sh, sw)
  # A 2-D product: the 4-D one's transposes (autodiff) had XLA:CPU copy the output gradient
  # into a transposed buffer for every kernel gradient.
  y = _rows(patches) @ kernel.reshape(kh * kw * c_in, c_out)
  y = y.reshape(*patches.shape[:-1], c_out)
  if conv.use_bias:
    y = y + conv.get_variable("params", "bias")
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_with_explicit_vjp(x, kernel, strides: tuple[int, int], pads: tuple):
  """``lax.conv`` (NHWC input, HWIO kernel, explicit ``pads``) with the backward pass of the
  module docstring; the same values and, to rounding, the same gradients."""
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=NHWC)


def _conv_forward(x, kernel, strides, pads):
  return conv_with_explicit_vjp(x, kernel, strides, pads), (x, kernel)


def _conv_backward(strides, pads, residuals, dy):
  """``dW = patches(pad(x))^T dy``; ``dx``: ``dy`` dilated by the strides and padded by
  ``k - 1`` (plus the rows no window reached) convolved with ``W`` flipped and transposed,
  then the input padding cropped."""
  x, kernel = residuals
  kh, kw, _, _ = kernel.shape
  (sh, sw), ((top, bottom), (left, right)) = strides, pads
  padded = jnp.pad(x, [(0, 0), (top, bottom), (left, right), (0, 0)])
  patches = _patches(padded, kh, kw, sh, sw)
  d_kernel = jnp.einsum("nk,no->ko", _rows(patches), _rows(dy)).reshape(kernel.shape)
  rest_h = (padded.shape[1] - kh) % sh
  rest_w = (padded.shape[2] - kw) % sw
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
  d_padded = lax.conv_general_dilated(
    dy,
    flipped,
    (1, 1),
    [(kh - 1, kh - 1 + rest_h), (kw - 1, kw - 1 + rest_w)],
    lhs_dilation=(sh, sw),
    dimension_numbers=NHWC,
  )
  d_x = d_padded[:, top : top + x.shape[1], left : left + x.shape[2], :]
  return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


conv_with_explicit_vjp.defvjp(_conv_forward, _conv_backward)


def conv_explicit_vjp(conv: nn.Conv, x):
  """What ``conv(x)`` computes, through ``conv_with_explicit_vjp``."""
  kernel = conv.get_variable("params", "kernel")
  strides = _pairs(conv.strides, 2)
  pads = _explicit_padding(conv.padding, kernel.shape[:2], strides, x.shape[1:3])
  y = conv_with_explicit_vjp(x, kernel, strides, tuple(tuple(p) for p in pads))
  if conv.use_bias:
    y = y + conv.get_variable("params", "bias")
  return y


CONVOLUTIONS = {"im2col": conv_as_matmul, "explicit_vjp": conv_explicit_vjp}


def _interceptor(compute):
  def intercept(next_fun, args, kwargs, context):
    conv = context.module
    if (
      isinstance(conv, nn.Conv)
      and context.method_name == "__call__"
      and conv.feature_group_count == 1
      and _pairs(conv.kernel_dilation, 2) == (1, 1)
      and _pairs(conv.input_dilation, 2) == (1, 1)
      and not kwargs
    ):
      return compute(conv, *args)
    return next_fun(*args, **kwargs)

  return intercept


def apply_convolutions(module: nn.Module, variables, x, conv: str):
  """``module.apply(variables, x)`` with its 2-D convolutions computed by ``CONVOLUTIONS[conv]``
  (``im2col`` or ``explicit_vjp``)."""
  with nn.intercept_methods(_interceptor(CONVOLUTIONS[conv])):
    return module.apply(variables, x)
