"""A cohort's rows moved to the device in chunks of one fixed size.

The methods read a cohort as ``[cohort, width, ...]`` on the device: each client's real rows
first, zeros after. Only the real rows cross from the host: packed flat, ``chunk`` rows at a
time, each row with its destination ``client * width + slot`` (int32). One jitted program
(``write_chunk``) scatters a chunk into the cohort's buffer, which it donates, so the write is
in place. The buffer is ``[cohort, width, features]`` (trailing dimensions flattened) while it
is written, and takes its real shape once at the end: XLA:CPU copied a whole image-shaped
buffer (``[cohort, width, 28, 28, 1]``) at every chunk to alias it, and does not a 3-D one.
A chunk has the same shape whatever the cohort's rows, so a run compiles it once and nothing
recompiles as cohorts grow or shrink; the last chunk's unused rows (destination out of
range, dropped) are the only padding moved: less than one chunk per cohort.
``chunk_rows`` sizes a chunk to ``1 / CHUNKS_PER_COHORT`` of an expected cohort's rows, so a
cohort of at least half the expected rows moves at most 1.25x its real bytes (plus the 4
destination bytes of each row).

Across processes (a ``sharding`` whose devices span several), each process packs the rows of
the clients it owns (``ClientStore.owner``) into its part of a global chunk, and the scatter,
partitioned by XLA, gathers every part to the devices that hold the destination clients: a
process reads only its own clients' rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

CHUNKS_PER_COHORT = 8
MIN_CHUNK = 64


def chunk_rows(expected_rows: float, multiple: int = 1) -> int:
  """Rows per chunk for cohorts of about ``expected_rows`` rows: the largest power of two at
  most ``expected_rows / CHUNKS_PER_COHORT`` (at least ``MIN_CHUNK``), rounded up to a multiple
  of ``multiple`` (the devices a process splits its chunk over)."""
  rows = max(MIN_CHUNK, 1 << max(0, int(expected_rows / CHUNKS_PER_COHORT).bit_length() - 1))
  return -(-rows // multiple) * multiple


def destinations(counts: np.ndarray, width: int) -> np.ndarray:
  """``[sum(counts)]`` int32: where each packed row goes in ``[len(counts) * width]``: client
  ``k``'s ``counts[k]`` rows to ``k * width + 0 .. counts[k] - 1``."""
  counts = np.asarray(counts, np.int64)
  if len(counts) * width >= 2**31:
    raise ValueError(f"data: a cohort of {len(counts)} x {width} rows exceeds int32 destinations")
  starts = np.repeat(np.cumsum(counts) - counts, counts)
  within = np.arange(int(counts.sum())) - starts
  return (np.repeat(np.arange(len(counts)) * width, counts) + within).astype(np.int32)


@functools.lru_cache(maxsize=64)
def _zeros(shapes, dtypes, sharding):
  """A jitted program making zero arrays of ``shapes`` and ``dtypes``, laid out by ``sharding``
  (None: the default device); one per layout, so a run compiles it once per cohort shape."""
  make = lambda: tuple(jnp.zeros(s, d) for s, d in zip(shapes, dtypes))
  return jax.jit(make, out_shardings=sharding)


@functools.lru_cache(maxsize=64)
def _shaped(shapes, sharding):
  """A jitted program giving flattened ``[size, width, features]`` arrays their ``shapes``."""
  shape = lambda arrays: tuple(a.reshape(s) for a, s in zip(arrays, shapes))
  return jax.jit(shape, out_shardings=sharding, donate_argnums=0)


@functools.partial(jax.jit, donate_argnums=0)
def write_chunk(cohort, rows, where):
  """``cohort`` (a tuple of ``[size, width, features]``) with ``rows`` (a tuple of ``[chunk,
  ...]``, ``features`` values a row) written at the flat positions ``where`` (``[chunk]``;
  ``size * width`` or beyond: dropped)."""

  def one(out, new):
    flat = out.reshape(out.shape[0] * out.shape[1], out.shape[2])
    new = new.reshape(new.shape[0], -1).astype(out.dtype)
    return flat.at[where].set(new, mode="drop").reshape(out.shape)

  return tuple(one(out, new) for out, new in zip(cohort, rows))


def _place(value: np.ndarray, sharding):
  """``value`` (this process's part) on the device(s): plainly without ``sharding``, else as
  its process's part of a global array split over ``sharding``."""
  if sharding is None:
    return jnp.asarray(value)
  global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
  return jax.make_array_from_process_local_data(sharding, value, global_shape)


def move_rows(store, client_ids, counts, width: int, chunk: int, sharding=None):
  """``(x, y)``: ``[len(counts), width, ...]`` on the device, client ``k``'s rows from
  ``store`` at ``k < len(client_ids)`` (the rest: ``counts`` 0, zeros), moved in chunks of
  ``chunk`` rows (module docstring). ``sharding``: the cohort arrays' sharding (leading axis
  split); this process then reads only the clients ``store.owner`` gives it."""
  client_ids, counts = np.asarray(client_ids, np.int64), np.asarray(counts, np.int64)
  size, processes = len(counts), jax.process_count() if sharding is not None else 1
  owner = store.owner(client_ids) if processes > 1 else np.zeros(len(client_ids), np.int64)
  mine = np.zeros(size, bool)
  mine[: len(client_ids)] = owner == (jax.process_index() if processes > 1 else 0)
  rows_x, rows_y = store.gather(client_ids[mine[: len(client_ids)]])
  where = destinations(np.where(mine, counts, 0), width)
  per_process = np.bincount(owner, counts[: len(client_ids)], minlength=processes)
  num_chunks = int(-(-per_process.max(initial=0) // chunk))
  shapes = tuple((size, width) + rows.shape[1:] for rows in (rows_x, rows_y))
  flat = tuple((size, width, int(np.prod(rows.shape[1:]))) for rows in (rows_x, rows_y))
  cohort = _zeros(flat, (rows_x.dtype, rows_y.dtype), sharding)()
  for first in range(0, num_chunks * chunk, chunk):
    part = slice(first, first + chunk)
    x = np.zeros((chunk,) + rows_x.shape[1:], rows_x.dtype)
    y = np.zeros((chunk,) + rows_y.shape[1:], rows_y.dtype)
    at = np.full(chunk, size * width, np.int32)
    taken = len(where[part])
    x[:taken], y[:taken], at[:taken] = rows_x[part], rows_y[part], where[part]
    cohort = write_chunk(cohort, (_place(x, sharding), _place(y, sharding)), _place(at, sharding))
  return _shaped(shapes, sharding)(cohort)
