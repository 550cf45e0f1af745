"""Executor.map_sum: every strategy gives the sum of the per-client outputs, and micro-cohorts
bound the memory of the reduction by the chunk, not the cohort."""

import os

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


@pytest.mark.parametrize("strategy", ["vmap", "chunked", "loop", "loop/2"])
def test_sorted_chunks_keep_the_cohort_order(strategy):
  """With ``sort_by`` the chunked strategy (and ``loop/k``, calls of k clients) reorders
  clients internally; outputs come back in the cohort's order and sums are unchanged."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(7, 5, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  sizes = jnp.array([5, 1, 4, 2, 5, 3, 1])
  fn = lambda w, x, n: _client_fn(w, x, n.astype(jnp.float32))
  expected = Executor("vmap").map(fn, (None, 0, 0))(w, x, sizes)
  name, _, per_call = strategy.partition("/")
  executor = Executor(name, 3, threads=2, clients_per_call=int(per_call or 1))
  mapped, summed = executor.map(fn, (None, 0, 0), 2), executor.map_sum(fn, (None, 0, 0), 2)
  if name != "loop":
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
  # loop calls of about 3 clients, 2 at once: 2 blocks, sorted [1, 1, 2] [3, 7, 10, 10]
  assert computed_steps(Executor("loop", threads=2, clients_per_call=3), steps) == 3 * 2 + 4 * 10


@pytest.mark.parametrize(
  "count,per_call,threads,sizes",
  [
    (10, 4, 2, [5, 5]),  # not 4 + 4 + 2: every thread gets as many calls
    (100, 4, 2, [4] * 20 + [5] * 4),
    (7, 4, 1, [3, 4]),
    (3, 4, 4, [1, 1, 1]),  # never an empty call
    (5, 1, 2, [1] * 5),
  ],
)
def test_loop_blocks_cover_the_cohort_in_near_equal_calls(count, per_call, threads, sizes):
  blocks = Executor("loop", threads=threads, clients_per_call=per_call).loop_blocks(count)
  assert blocks[0][0] == 0 and blocks[-1][1] == count
  assert all(stop == start for (_, stop), (start, _) in zip(blocks, blocks[1:]))
  assert sorted(stop - start for start, stop in blocks) == sizes


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
  _, result = run(setup.init_params(jax.random.key(0)), cohort, jax.random.key(1))
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
  # inside a jit (an algorithm compiling its round anyway) the calls are traced in order
  blocked = Executor("loop", threads=2, clients_per_call=3)
  chex.assert_trees_all_close(
    jax.jit(blocked.map_sum(_client_fn, (None, 0, None)))(w, x, 0.5),
    results[0][1],
    atol=1e-5,
    rtol=1e-5,
  )
  with pytest.raises(ValueError, match="execution.threads must be >= 1"):
    Executor("loop", threads=0)
  with pytest.raises(ValueError, match="execution.clients_per_call must be >= 1"):
    Executor("loop", clients_per_call=0)


def test_auto_execution_on_cpu_keeps_every_core_busy_with_loop_calls():
  """``auto`` on CPU: ``loop``, a call per core at once; blocks of vmapped clients for models
  without convolutions, sequence models included (from ``MIN_LOOP_COHORT`` clients; one
  ``vmap`` program below), one client a call (im2col convolutions) for convolutional ones;
  explicit settings win."""
  from fedjax_lab.build import CPU_CLIENTS_PER_CALL, MIN_LOOP_COHORT, resolve_execution
  from fedjax_lab.config import load_config

  threads = min(2, os.cpu_count() or 1)
  large = [f"cohort_size={MIN_LOOP_COHORT}", "data.num_clients=100"]
  mlp = resolve_execution(load_config(None, ["model.name=mlp", *large]))
  assert (mlp.strategy, mlp.conv, mlp.threads) == ("loop", "xla", threads)
  assert mlp.clients_per_call == CPU_CLIENTS_PER_CALL
  small = resolve_execution(load_config(None, ["model.name=mlp", "cohort_size=10"]))
  assert (small.strategy, small.threads) == ("vmap", 1)
  sequence = ["model.name=transformer_lm", "data.source=shakespeare"]
  assert resolve_execution(load_config(None, sequence + large)).strategy == "loop"
  assert resolve_execution(load_config(None, sequence + ["cohort_size=10"])).strategy == "vmap"
  cnn = resolve_execution(load_config(None, ["model.name=fedavg_cnn"]))
  assert (cnn.strategy, cnn.conv, cnn.threads, cnn.clients_per_call) == (
    "loop",
    "im2col",
    threads,
    1,
  )
  chosen = resolve_execution(
    load_config(
      None,
      [
        "model.name=mlp",
        "execution.strategy=chunked",
        "execution.clients_per_call=2",
        "execution.threads=3",
      ],
    )
  )
  assert (chosen.strategy, chosen.threads, chosen.clients_per_call) == ("chunked", 3, 2)
