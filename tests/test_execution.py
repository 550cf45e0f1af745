"""Executor.map_sum: every strategy gives the sum of the per-client outputs, and micro-cohorts
bound the memory of the reduction by the chunk, not the cohort."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_lab.engine.execution import Executor, computed_steps


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


@pytest.mark.parametrize("strategy", ["vmap", "chunked", "loop"])
def test_sorted_chunks_keep_the_cohort_order(strategy):
  """With ``sort_by`` the chunked strategy reorders clients internally; outputs come back in
  the cohort's order and sums are unchanged."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(7, 5, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  sizes = jnp.array([5, 1, 4, 2, 5, 3, 1])
  fn = lambda w, x, n: _client_fn(w, x, n.astype(jnp.float32))
  expected = Executor("vmap").map(fn, (None, 0, 0))(w, x, sizes)
  executor = Executor(strategy, 3)
  mapped, summed = executor.map(fn, (None, 0, 0), 2), executor.map_sum(fn, (None, 0, 0), 2)
  if strategy != "loop":
    mapped, summed = jax.jit(mapped), jax.jit(summed)
  chex.assert_trees_all_close(mapped(w, x, sizes), expected, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(
    summed(w, x, sizes), jax.tree.map(lambda l: l.sum(0), expected), atol=1e-4, rtol=1e-5
  )


def test_computed_steps_formula():
  steps = np.array([10, 1, 7, 2, 10, 3, 1])
  assert computed_steps(Executor("loop"), steps) == 34  # each client its own count
  assert computed_steps(Executor("vmap"), steps) == 70  # everyone to the cohort's largest
  # sorted chunks of 3: [1, 1, 2] [3, 7, 10] [10] -> 3*2 + 3*10 + 1*10
  assert computed_steps(Executor("chunked", 3), steps) == 46
  assert computed_steps(Executor("loop"), steps, unrolled_steps=12) == 84


@pytest.mark.parametrize(
  "strategy,iterations",
  [("loop", [4, 1, 3, 2, 6]), ("vmap", [6]), ("chunked", [2, 4, 6])],
  ids=["loop", "vmap", "chunked"],
)
def test_step_loops_run_to_the_real_step_counts(digits_dataset, strategy, iterations):
  """The local step loop's iterations, counted from inside it: each client alone runs its own
  count (``loop``), a batch its largest member's (``vmap``), each sorted chunk its own largest
  (``chunked``, chunks [1, 2] [3, 4] [6]): nothing runs to the federation's maximum."""
  from fedjax_lab.algorithms import ClientSetup
  from fedjax_lab.data import FederatedData
  from fedjax_lab.engine.local import LocalSchedule
  from fedjax_lab.models import build_model
  from fedjax_lab.ops.losses import masked_mean, per_example_cross_entropy

  sizes = [40, 10, 30, 20, 60, 200]  # batch 10, one epoch: 4, 1, 3, 2, 6, 20 steps
  clients = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])
  data = FederatedData.from_indices(digits_dataset, clients, [c[:0] for c in clients])
  model = build_model("mlp", 10)
  counted = []

  def counting_loss(params, x, y, mask, context):
    jax.debug.callback(lambda: counted.append(1))
    return masked_mean(per_example_cross_entropy(model.apply(params, x), y), mask)

  setup = ClientSetup(
    model,
    data.train_x[0, :1],
    optax.sgd(0.1),
    LocalSchedule(10, data.max_examples),
    Executor(strategy, 2),
    data.num_clients,
  )
  train = setup.cohort_trainer(None, None, None, data_loss=counting_loss)
  cohort = data.cohort(np.arange(5))  # the 200-example client (20 steps) is not sampled
  run = train if strategy == "loop" else jax.jit(train)
  _, result = run(
    setup.init_params(jax.random.key(0)),
    cohort.x,
    cohort.y,
    cohort.num_examples,
    jax.random.split(jax.random.key(1), 5),
    None,
  )
  jax.block_until_ready(result)
  np.testing.assert_array_equal(result.num_steps, [4, 1, 3, 2, 6])
  assert len(counted) == sum(iterations)


def test_loop_threads_give_the_same_numbers_in_the_same_order():
  """``loop`` with a thread pool runs clients at once but returns (and sums) them in the
  cohort's order: bit-identical to one at a time."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(7, 5, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  results = []
  for threads in (1, 3):
    executor = Executor("loop", threads=threads)
    results.append((executor.map(_client_fn, (None, 0, None))(w, x, 0.5),
                    executor.map_sum(_client_fn, (None, 0, None))(w, x, 0.5)))  # fmt: skip
  chex.assert_trees_all_equal(*results)
  with pytest.raises(ValueError, match="execution.threads must be >= 1"):
    Executor("loop", threads=0)
