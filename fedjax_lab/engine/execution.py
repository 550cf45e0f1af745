"""Execution strategies: how a per-client function is mapped over the cohort axis.

Every strategy computes the same function; they differ in speed and peak memory.

- ``vmap``: the whole cohort in one batched program (the default on GPU/TPU).
- ``chunked``: micro-cohorts of ``chunk_size`` clients (sorted by work when ``sort_by`` is
  given), a vmap per chunk, looped inside the program (``lax.map(..., batch_size=chunk_size)``):
  peak activation memory follows the chunk.
- ``loop``: a jitted single-client function called per client from Python (``threads`` at once)
  and the outputs stacked in the cohort's order. The round around it then runs op by op
  (``Executor.jit_round`` is False). On XLA:CPU this is faster for convolutional models, whose
  vmapped per-client convolutions lower to slow grouped convolutions, and each client's step
  loop runs exactly its own steps.

``map`` returns every client's output stacked (``[cohort, ...]``: memory grows with the cohort).
``map_sum`` returns their sum, accumulated as it goes: with ``chunked`` at most one chunk of
outputs is alive at a time, with ``loop`` about ``threads`` clients' outputs, so an aggregate
over a cohort of 1,000 costs the memory of a chunk, not of the cohort.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_lab.ops.aggregate import client_sum

STRATEGIES = ("vmap", "chunked", "loop")


@dataclasses.dataclass(frozen=True)
class Executor:
  """``map(fn, in_axes)`` lifts ``fn`` over a leading client axis (``in_axes`` entries 0/None)."""

  strategy: str = "vmap"
  chunk_size: int = 8
  threads: int = 1  # loop only: clients run at once

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(
        f"execution.strategy={self.strategy!r} is unknown; allowed: {', '.join(STRATEGIES)}"
      )
    if self.chunk_size < 1:
      raise ValueError(f"execution.chunk_size must be >= 1, got {self.chunk_size}")
    if self.threads < 1:
      raise ValueError(f"execution.threads must be >= 1, got {self.threads}")

  @property
  def jit_round(self) -> bool:
    """Whether the algorithm's whole round can be compiled as one program."""
    return self.strategy != "loop"

  def map(
    self, fn: Callable, in_axes: Sequence[int | None], sort_by: int | None = None
  ) -> Callable:
    """``fn`` over the client axis, outputs stacked ``[cohort, ...]`` in the cohort's order.

    ``sort_by``: the position of a per-client integer argument (the example count) by which
    ``chunked`` groups clients into chunks, so that clients of similar work share a chunk and
    a chunk's rolled step loop runs to its own largest count; the outputs are put back in
    order. The other strategies ignore it.
    """
    in_axes = tuple(in_axes)
    if self.strategy == "vmap":
      return jax.vmap(fn, in_axes=in_axes)
    if self.strategy == "chunked":

      def chunked(*args):
        order = _order(args, sort_by)
        args = _permute(args, in_axes, order)
        mapped = tuple(a for a, axis in zip(args, in_axes) if axis == 0)
        outputs = jax.lax.map(
          lambda rows: fn(*_merge(args, in_axes, rows)), mapped, batch_size=self.chunk_size
        )
        if order is None:
          return outputs
        return jax.tree.map(lambda leaf: leaf[jnp.argsort(order)], outputs)

      return chunked

    jitted = jax.jit(fn)

    def loop(*args):
      outputs = list(self._each_client(jitted, args, in_axes))
      return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)

    return loop

  def map_sum(
    self, fn: Callable, in_axes: Sequence[int | None], sort_by: int | None = None
  ) -> Callable:
    """``sum_k fn(args_k)`` over the client axis, as a pytree shaped like one output;
    ``sort_by`` as in ``map``."""
    in_axes = tuple(in_axes)
    if self.strategy == "vmap":
      return lambda *args: client_sum(jax.vmap(fn, in_axes=in_axes)(*args))
    if self.strategy == "chunked":
      return lambda *args: _chunked_sum(
        fn, in_axes, self.chunk_size, *_permute(args, in_axes, _order(args, sort_by))
      )

    jitted = jax.jit(fn)
    add = jax.jit(lambda total, new: jax.tree.map(jnp.add, total, new), donate_argnums=0)

    def loop_sum(*args):
      total = None
      for out in self._each_client(jitted, args, in_axes):
        total = out if total is None else add(total, out)
      return total

    return loop_sum

  def _each_client(self, jitted: Callable, args, in_axes) -> Iterator:
    """``loop``: each client's output, in the cohort's order. With ``threads > 1`` that many
    clients run at once from a thread pool (XLA:CPU uses two cores for one small client only
    1.5x as well as one), at most ``threads`` results ahead of the consumer, so memory holds a
    few clients' outputs and sums still add in the cohort's order."""

    def one(client):
      return jitted(*_merge(args, in_axes, _rows(args, in_axes, client)))

    count = cohort_size(args, in_axes)
    if self.threads == 1:
      yield from (one(client) for client in range(count))
      return
    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
      pending = collections.deque()
      for client in range(count):
        pending.append(pool.submit(lambda c: jax.block_until_ready(one(c)), client))
        if len(pending) > self.threads:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()


def computed_steps(executor: Executor, client_steps, unrolled_steps: int | None = None) -> int:
  """Local steps a cohort's training computes, real and wasted, with step loops that run to
  each client's own count (``unrolled_steps``: a static loop of that length for everyone).

  ``vmap`` runs every client to the cohort's largest count; ``chunked`` (clients sorted by
  count, as ``sort_by`` does) runs each chunk to its own largest; ``loop`` runs each client's
  own. Host side (numpy): ``client_steps [cohort]``.
  """
  steps = np.asarray(client_steps, np.int64)
  if unrolled_steps is not None:
    return int(steps.size * unrolled_steps)
  if executor.strategy == "loop" or steps.size == 0:
    return int(steps.sum())
  if executor.strategy == "vmap":
    return int(steps.size * steps.max())
  chunks = np.sort(steps)
  return int(
    sum(
      chunk.size * chunk.max()
      for chunk in np.split(chunks, range(executor.chunk_size, steps.size, executor.chunk_size))
    )
  )


def cohort_size(args, in_axes) -> int:
  """The length of the client axis of the first client-mapped argument that has leaves (an
  empty pytree, such as a model with no personal part, has none)."""
  mapped = (jax.tree.leaves(a) for a, axis in zip(args, in_axes) if axis == 0)
  return next(leaves[0].shape[0] for leaves in mapped if leaves)


def _order(args, sort_by: int | None):
  """The permutation that sorts the clients by ``args[sort_by]`` (None: keep the order)."""
  return None if sort_by is None else jnp.argsort(args[sort_by])


def _permute(args, in_axes, order):
  """The client-mapped arguments reordered by ``order`` (None: unchanged)."""
  if order is None:
    return args
  return tuple(
    jax.tree.map(lambda leaf: leaf[order], a) if axis == 0 else a for a, axis in zip(args, in_axes)
  )


def _rows(args, in_axes, clients):
  """The client-mapped arguments indexed by ``clients`` (one index, or a slice)."""
  return tuple(
    jax.tree.map(lambda leaf: leaf[clients], a) for a, axis in zip(args, in_axes) if axis == 0
  )


def _chunked_sum(fn, in_axes, chunk_size, *args):
  """A ``lax.scan`` over the full chunks of ``chunk_size`` clients (each sliced in place, a
  vmap summed into the carry), then one vmap over the remainder."""
  size = cohort_size(args, in_axes)
  full = size // chunk_size
  batched = jax.vmap(fn, in_axes=in_axes)
  chunk_sum = lambda rows: client_sum(batched(*_merge(args, in_axes, rows)))

  def chunk(index):
    return tuple(
      jax.tree.map(
        lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, index * chunk_size, chunk_size), a
      )
      for a, axis in zip(args, in_axes)
      if axis == 0
    )

  total = None
  if full:
    total, _ = jax.lax.scan(
      lambda acc, index: (jax.tree.map(jnp.add, acc, chunk_sum(chunk(index))), None),
      chunk_sum(chunk(0)),
      jnp.arange(1, full),
    )
  if full * chunk_size < size:
    tail = chunk_sum(_rows(args, in_axes, slice(full * chunk_size, size)))
    total = tail if total is None else jax.tree.map(jnp.add, total, tail)
  return total


def _merge(args, in_axes, mapped_rows):
  """``args`` with the client-mapped positions replaced, in order, by ``mapped_rows``."""
  rows = iter(mapped_rows)
  return tuple(next(rows) if axis == 0 else a for a, axis in zip(args, in_axes))
