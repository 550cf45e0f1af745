"""Execution strategies: how a per-client function is mapped over the cohort axis.

Every strategy computes the same function; they differ in speed and peak memory.

- ``vmap``: the whole cohort in one batched program (the default on GPU/TPU).
- ``chunked``: micro-cohorts of ``chunk_size`` clients (sorted by work when ``sort_by`` is
  given), a vmap per chunk, looped inside the program (``lax.map(..., batch_size=chunk_size)``):
  peak activation memory follows the chunk.
- ``loop``: a jitted function called from Python per client, or per block of
  ``clients_per_call`` clients (vmapped, clients sorted by work as in ``chunked``), ``threads``
  calls at once, the outputs stacked in the cohort's order. The round around it then runs op by
  op (``Executor.jit_round`` is False). On XLA:CPU this is the fastest way to use the cores:
  two independent small programs keep both cores busy where one program's small matrix
  products parallelize poorly (a block of 4 MLP clients); convolutional models go one client a
  call, whose step loop then runs exactly its own steps (vmapped per-client convolutions lower
  to slow grouped convolutions).

``map`` returns every client's output stacked (``[cohort, ...]``: memory grows with the cohort).
``map_sum`` returns their sum, accumulated as it goes: with ``chunked`` at most one chunk of
outputs is alive at a time, with ``loop`` about ``threads`` clients' outputs, so an aggregate
over a cohort of 1,000 costs the memory of a chunk, not of the cohort.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
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
  threads: int = 1  # loop only: calls run at once
  clients_per_call: int = 1  # loop only: clients vmapped in one call

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(
        f"execution.strategy={self.strategy!r} is unknown; allowed: {', '.join(STRATEGIES)}"
      )
    if self.chunk_size < 1:
      raise ValueError(f"execution.chunk_size must be >= 1, got {self.chunk_size}")
    if self.threads < 1:
      raise ValueError(f"execution.threads must be >= 1, got {self.threads}")
    if self.clients_per_call < 1:
      raise ValueError(f"execution.clients_per_call must be >= 1, got {self.clients_per_call}")

  @property
  def jit_round(self) -> bool:
    """Whether the algorithm's whole round can be compiled as one program."""
    return self.strategy != "loop"

  def map(
    self, fn: Callable, in_axes: Sequence[int | None], sort_by: int | None = None
  ) -> Callable:
    """``fn`` over the client axis, outputs stacked ``[cohort, ...]`` in the cohort's order.

    ``sort_by``: the position of a per-client integer argument (the example count) by which
    ``chunked`` (and ``loop`` with ``clients_per_call > 1``) groups clients into chunks, so
    that clients of similar work share a chunk and a chunk's rolled step loop runs to its own
    largest count; the outputs are put back in order. ``vmap`` ignores it.
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
        return _unpermute(outputs, order)

      return chunked

    call = self._call(fn, in_axes, summed=False)
    join = jnp.stack if self.clients_per_call == 1 else jnp.concatenate

    def loop(*args):
      order = self._loop_order(args, sort_by)
      outputs = list(self._each_call(call, _permute(args, in_axes, order), in_axes))
      return _unpermute(jax.tree.map(lambda *leaves: join(leaves), *outputs), order)

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

    call = self._call(fn, in_axes, summed=True)
    add = jax.jit(lambda total, new: jax.tree.map(jnp.add, total, new), donate_argnums=0)

    def loop_sum(*args):
      args = _permute(args, in_axes, self._loop_order(args, sort_by))
      total = None
      for out in self._each_call(call, args, in_axes):
        total = out if total is None else add(total, out)
      return total

    return loop_sum

  def _call(self, fn: Callable, in_axes, summed: bool) -> Callable:
    """``loop``'s jitted call: ``fn`` on one client, or vmapped over a block of
    ``clients_per_call`` clients (the block's outputs summed when ``summed``)."""
    if self.clients_per_call == 1:
      return jax.jit(fn)
    batched = jax.vmap(fn, in_axes=in_axes)
    return jax.jit(lambda *args: client_sum(batched(*args)) if summed else batched(*args))

  def _loop_order(self, args, sort_by: int | None):
    """``loop`` sorts clients by work only when several share a call."""
    return _order(args, sort_by) if self.clients_per_call > 1 else None

  def _each_call(self, call: Callable, args, in_axes) -> Iterator:
    """``loop``: each call's output (one client's, or a block's), in the cohort's order. With
    ``threads > 1`` that many calls run at once from a thread pool, at most ``threads``
    results ahead of the consumer, so memory holds a few calls' outputs and sums still add in
    the cohort's order. Called inside a ``jit`` (an algorithm that compiles its round whatever
    the strategy) the calls are traced one after the other into that program: JAX's tracing
    state belongs to the calling thread."""

    blocks = self.loop_blocks(cohort_size(args, in_axes))
    pieces = tuple(start if self.clients_per_call == 1 else (start, stop) for start, stop in blocks)
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args))
    if traced:  # under a trace the calls join the caller's program
      rows = [_rows(args, in_axes, _index(piece)) for piece in pieces]
    else:  # one program cuts every call's rows (not a dispatch per call and argument)
      rows = _split_rows(tuple(a for a, axis in zip(args, in_axes) if axis == 0), pieces)
    one = lambda index: call(*_merge(args, in_axes, rows[index]))
    if self.threads == 1 or traced:
      yield from (one(index) for index in range(len(pieces)))
      return
    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
      pending = collections.deque()
      for index in range(len(pieces)):
        pending.append(pool.submit(lambda i: jax.block_until_ready(one(i)), index))
        if len(pending) > self.threads:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()

  def loop_blocks(self, count: int) -> list[tuple[int, int]]:
    """``loop``'s calls as ``(start, stop)`` client ranges: ``count`` clients in ``k`` blocks
    of near-equal size (differing by at most one, so at most two compiled shapes), ``k`` the
    multiple of ``threads`` that brings the block size nearest ``clients_per_call`` (every
    thread gets as many calls; 10 clients, 4 a call, 2 threads: 5 + 5, not 4 + 4 + 2)."""
    if self.clients_per_call == 1:
      return [(client, client + 1) for client in range(count)]
    calls = self.threads * max(1, round(count / (self.threads * self.clients_per_call)))
    calls = min(calls, count)
    bounds = [count * i // calls for i in range(calls + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def computed_steps(executor: Executor, client_steps, unrolled_steps: int | None = None) -> int:
  """Local steps a cohort's training computes, real and wasted, with step loops that run to
  each client's own count (``unrolled_steps``: a static loop of that length for everyone).

  ``vmap`` runs every client to the cohort's largest count; ``chunked`` (clients sorted by
  count, as ``sort_by`` does) runs each chunk to its own largest, and so does ``loop`` with
  each block of ``loop_blocks`` (one client a call: exactly its own). Host side (numpy):
  ``client_steps [cohort]``.
  """
  steps = np.asarray(client_steps, np.int64)
  if unrolled_steps is not None:
    return int(steps.size * unrolled_steps)
  if steps.size == 0:
    return 0
  if executor.strategy == "vmap":
    return int(steps.size * steps.max())
  if executor.strategy == "chunked":
    starts = list(range(0, steps.size, executor.chunk_size))
  else:
    starts = [start for start, _ in executor.loop_blocks(steps.size)]
  chunks = np.split(np.sort(steps), starts[1:])
  return int(sum(chunk.size * chunk.max() for chunk in chunks))


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


def _unpermute(outputs, order):
  """Outputs stacked in ``order`` put back in the cohort's order (None: already in it)."""
  if order is None:
    return outputs
  return jax.tree.map(lambda leaf: leaf[jnp.argsort(order)], outputs)


def _rows(args, in_axes, clients):
  """The client-mapped arguments indexed by ``clients`` (one index, or a slice)."""
  return tuple(
    jax.tree.map(lambda leaf: leaf[clients], a) for a, axis in zip(args, in_axes) if axis == 0
  )


def _index(piece):
  """A ``loop`` piece as an index: one client, or a ``(start, stop)`` block."""
  return piece if isinstance(piece, int) else slice(*piece)


@functools.partial(jax.jit, static_argnums=1)
def _split_rows(mapped, pieces):
  """The client-mapped arguments ``mapped`` cut into ``pieces`` (``_index``) in one program:
  a list with each piece's rows of every argument. The pieces are copies, so the cohort's data
  is held twice while the round runs."""
  return [tuple(jax.tree.map(lambda leaf: leaf[_index(p)], a) for a in mapped) for p in pieces]


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
