"""Mixed precision for local training: parameters, optimizer state and aggregation stay in
float32; the forward and backward passes run in ``compute_dtype``.

``apply_in(dtype, apply_fn)(params, x) = float32(apply_fn(dtype(params), dtype(x)))`` (every
output of a tuple of outputs cast back): the
gradient with respect to the float32 parameters flows back through the casts, so updates are
accumulated in float32. bfloat16 halves activation memory and uses the bf16 matrix units of
GPUs/TPUs; on CPUs without them it is usually slower (docs/performance.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")


def apply_in(dtype: str, apply_fn):
  """``apply_fn`` computing in ``dtype`` (returns ``apply_fn`` itself for float32)."""
  if dtype == "float32":
    return apply_fn
  compute = jnp.dtype(dtype)

  def apply(params, x):
    cast = lambda leaf: leaf.astype(compute) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
    outputs = apply_fn(jax.tree.map(cast, params), cast(x))
    return jax.tree.map(lambda out: out.astype(jnp.float32), outputs)

  return apply
