"""bfloat16 compute: float32 parameters and updates, bf16 forward/backward."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_lab.algorithms import ClientSetup
from fedjax_lab.algorithms.fedopt import fedopt
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.engine.precision import apply_in
from fedjax_lab.models import build_model


def test_apply_in_bfloat16_computes_in_bf16_and_returns_float32():
  model = build_model("mlp", 10)
  x = jnp.ones((2, 64))
  params = model.init(jax.random.key(0), x)
  apply = model.apply
  assert apply_in("float32", apply) is apply
  logits = apply_in("bfloat16", model.apply)(params, x)
  assert logits.dtype == jnp.float32
  jaxpr = str(jax.make_jaxpr(apply_in("bfloat16", model.apply))(params, x))
  assert "bf16[64,200]" in jaxpr and "bf16[2,10]" in jaxpr


def test_bfloat16_rounds_keep_float32_params_and_track_float32(tiny_federation):
  def rounds(dtype):
    setup = ClientSetup(
      build_model("mlp", 10),
      tiny_federation.train_x[0, :1],
      optax.sgd(0.1),
      LocalSchedule(4, tiny_federation.max_examples, epochs=2),
      Executor("vmap"),
      tiny_federation.num_clients,
      compute_dtype=dtype,
    )
    algorithm = fedopt(setup, optax.sgd(1.0))
    state, losses = algorithm.init(jax.random.key(0)), []
    for r in range(4):
      state, metrics = jax.jit(algorithm.round)(
        state, tiny_federation.cohort(np.array([0, 2, 4, 5])), jax.random.key(r)
      )
      losses.append(float(metrics["train_loss"]))
    return state.params, losses

  full, full_losses = rounds("float32")
  half, half_losses = rounds("bfloat16")
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(half))
  assert half_losses[-1] < half_losses[0] - 0.3  # it learns
  np.testing.assert_allclose(half_losses, full_losses, atol=0.05)
  chex.assert_trees_all_close(half, full, atol=0.02)
