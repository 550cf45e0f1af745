"""Executor.map_sum: every strategy gives the sum of the per-client outputs, and micro-cohorts
bound the memory of the reduction by the chunk, not the cohort."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lab.engine.execution import Executor


def _client_fn(w, x, scale):
  """A small per-client computation with a shared argument: (w @ x-like product, scalar)."""
  hidden = jnp.tanh(x @ w) * scale
  return {"sum": hidden.sum(0), "outer": x.T @ hidden}, jnp.sum(hidden**2)


@pytest.mark.parametrize(
  "strategy,chunk_size,cohort",
  [("vmap", 1, 7), ("chunked", 3, 7), ("chunked", 3, 6), ("chunked", 8, 7), ("loop", 1, 5)],
)
def test_map_sum_equals_the_sum_of_map(strategy, chunk_size, cohort):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(cohort, 5, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  executor = Executor(strategy, chunk_size)
  stacked = Executor("vmap").map(_client_fn, (None, 0, None))(w, x, 0.5)
  expected = jax.tree.map(lambda leaf: leaf.sum(0), stacked)
  run = executor.map_sum(_client_fn, (None, 0, None))
  got = run(w, x, 0.5) if strategy == "loop" else jax.jit(run)(w, x, 0.5)
  chex.assert_trees_all_close(got, expected, atol=1e-5, rtol=1e-5)


def _temp_bytes(executor, cohort):
  """Compiled temporary memory of summing ``cohort`` clients' 256 x 256 outer products."""
  fn = lambda w, x: x.T @ jnp.tanh(x @ w)
  x = jax.ShapeDtypeStruct((cohort, 64, 256), jnp.float32)
  w = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  compiled = jax.jit(executor.map_sum(fn, (None, 0))).lower(w, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_micro_cohorts_bound_memory_by_the_chunk():
  chunked = [_temp_bytes(Executor("chunked", 4), cohort) for cohort in (16, 128)]
  stacked = [_temp_bytes(Executor("vmap"), cohort) for cohort in (16, 128)]
  output_bytes = 256 * 256 * 4
  assert chunked[1] - chunked[0] < output_bytes  # flat in the cohort
  assert stacked[1] - stacked[0] > 100 * output_bytes  # vmap holds every client's output
