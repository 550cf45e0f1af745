"""Client stores: how a split of a federation holds its clients' examples.

``ClientStore`` is what the engine reads a split through: each client's example count, and
``gather(client_ids)``, their rows one client after the other. Everything else (a cohort's
rows on the device, ``data/transfer.py``; the padded layout of a block of clients) follows
from those two. ``ClientArrays`` holds the examples; a generated store
(``data/generated.py``) makes each client when it is gathered.

``ClientArrays``: every client's examples held flat, client after client, with offsets. Client
``k`` owns rows ``offsets[k] : offsets[k + 1]`` of ``x`` and ``y``. A federation costs
its real examples and nothing more (no padding to the largest client), and ``x``, ``y`` may be
memory maps of ``.npy`` files (``save`` / ``load``), so a federation larger than memory is
read only where a round touches it. Padding happens late, to the clients actually gathered:
``padded`` builds the ``[clients, width, ...]`` layout for a block of clients (evaluation,
small federations).

``ProcessShard``: the part of a store one of several processes (``jax.distributed``) holds:
client ``k`` belongs to process ``k % count``; gathering another process's client refuses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import mmap
import pathlib
import time
from collections.abc import Sequence

import numpy as np


class ClientStore:
  """A split's clients (module docstring). Subclasses define ``num_examples`` (``[num_clients]``
  int32), ``gather`` and ``first_input``."""

  @property
  def num_examples(self) -> np.ndarray:
    raise NotImplementedError

  def gather(self, client_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: the rows of ``client_ids``, client after client, in that order."""
    raise NotImplementedError

  def first_input(self) -> np.ndarray:
    """``[1, ...]``: one example's input (its shape and dtype initialize a model)."""
    raise NotImplementedError

  @property
  def num_clients(self) -> int:
    return len(self.num_examples)

  @functools.cached_property
  def max_examples(self) -> int:
    """The largest client's example count (at least 1, the width of a padded layout)."""
    return max(1, int(self.num_examples.max(initial=0)))

  @property
  def total(self) -> int:
    return int(self.num_examples.sum(dtype=np.int64))

  def owner(self, client_ids) -> np.ndarray:
    """The process that holds each of ``client_ids``: 0 here (one process holds every client;
    ``ProcessShard`` splits them)."""
    return np.zeros(len(client_ids), np.int64)

  def padded(self, client_ids=None, width: int | None = None):
    """``(x, y, counts)``: ``client_ids`` (default: every client) in the padded layout
    ``[clients, width, ...]``, real rows first and zeros after; ``width`` defaults to the
    largest of these clients. Costs ``clients * width`` rows: for blocks of clients and small
    federations."""
    if client_ids is None:
      client_ids = np.arange(self.num_clients)
    client_ids = np.asarray(client_ids, np.int64)
    counts = self.num_examples[client_ids]
    width = width or max(1, int(counts.max(initial=0)))
    if (counts > width).any():
      raise ValueError(f"data: a client holds {counts.max()} examples, more than width {width}")
    rows_x, rows_y = self.gather(client_ids)
    slots = np.arange(width)[None] < counts[:, None]
    x = np.zeros((len(client_ids), width) + rows_x.shape[1:], rows_x.dtype)
    y = np.zeros((len(client_ids), width) + rows_y.shape[1:], rows_y.dtype)
    x[slots], y[slots] = rows_x, rows_y
    return x, y, counts.astype(np.int32)


def drop_pages(array: np.ndarray, start: int, stop: int) -> None:
  """Drop rows ``start:stop`` of a memory-mapped ``array`` from this process's memory
  (``madvise(MADV_DONTNEED)`` on the whole pages they cover; read back from the file when next
  touched): a pass over a store larger than memory keeps a block resident, not the store.
  Only read-only maps (``mode='r'``, which hold no changes of their own); anything else is left
  alone."""
  mapping = getattr(array, "_mmap", None)
  if getattr(array, "mode", None) != "r" or mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
    return
  row_bytes = array.strides[0]
  base = array.offset % mmap.ALLOCATIONGRANULARITY  # where the array starts in the mapping
  first = base + start * row_bytes
  first -= first % mmap.PAGESIZE
  last = min(base + stop * row_bytes, len(mapping))
  if last > first:
    mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


class ClientArraysWriter:
  """``ClientArrays.save``'s files written client by client, never held whole: the files are
  made at their full size from each client's row count (``counts``), then each client's rows
  go to their place with plain file writes, so memory follows one client. Clients are
  written in order; ``done`` (kept in ``{name}_written.json``) is how many are on disk, so an
  interrupted conversion continues where it stopped. ``x_row`` and ``y_row``: one row's
  ``(shape, dtype)``."""

  def __init__(self, folder, name: str, counts, x_row: tuple, y_row: tuple):
    self.folder, self.name = pathlib.Path(folder), name
    self.folder.mkdir(parents=True, exist_ok=True)
    counts = np.asarray(counts, np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    layout = {"counts": int(len(counts)), "rows": int(self.offsets[-1]),
              "x": [list(x_row[0]), str(np.dtype(x_row[1]))],
              "y": [list(y_row[0]), str(np.dtype(y_row[1]))]}  # fmt: skip
    self.progress = self.folder / f"{name}_written.json"
    recorded = json.loads(self.progress.read_text()) if self.progress.exists() else {}
    self.done = recorded.get("done", 0) if recorded.get("layout") == layout else 0
    self.layout, self.rows, self.saved = layout, {}, time.monotonic()
    for field, (shape, dtype) in (("x", x_row), ("y", y_row)):
      path = self.folder / f"{name}_{field}.npy"
      if self.done == 0 or not path.exists():
        self.done = 0
        np.lib.format.open_memmap(path, "w+", np.dtype(dtype), (int(self.offsets[-1]), *shape))
      start = np.load(path, mmap_mode="r").offset  # where the rows begin, past the header
      row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
      self.rows[field] = (path, start, row_bytes, np.dtype(dtype), tuple(shape))
    np.save(self.folder / f"{name}_offsets.npy", self.offsets)

  def write(self, client: int, x: np.ndarray, y: np.ndarray) -> None:
    """Client ``client``'s rows (the next one to write)."""
    if client != self.done:
      raise ValueError(f"{self.name}: client {client} written out of order (next: {self.done})")
    count = int(self.offsets[client + 1] - self.offsets[client])
    for field, values in (("x", x), ("y", y)):
      path, start, row_bytes, dtype, shape = self.rows[field]
      values = np.ascontiguousarray(values, dtype)
      if values.shape != (count, *shape):
        raise ValueError(
          f"{self.name}: client {client} gave {field} shaped {values.shape}, expected "
          f"{(count, *shape)}"
        )
      with open(path, "r+b") as f:
        f.seek(start + int(self.offsets[client]) * row_bytes)
        f.write(values.tobytes())
    self.done += 1
    if time.monotonic() - self.saved > 1.0:  # at most a progress write a second
      self.close()

  def close(self) -> None:
    """Record the clients written so far (``done``), as a later writer reads it."""
    self.progress.write_text(json.dumps({"layout": self.layout, "done": self.done}))
    self.saved = time.monotonic()


@dataclasses.dataclass(frozen=True)
class ClientArrays(ClientStore):
  """Ragged per-client examples (module docstring). ``offsets``: ``[num_clients + 1]``, starting
  at 0, non-decreasing, ending at ``len(x)``."""

  x: np.ndarray
  y: np.ndarray
  offsets: np.ndarray

  @classmethod
  def from_indices(
    cls, x: np.ndarray, y: np.ndarray, indices: Sequence[np.ndarray]
  ) -> ClientArrays:
    """Client ``k`` holds ``x[indices[k]]``, ``y[indices[k]]`` (copied once, in that order)."""
    rows = np.concatenate([np.asarray(i, np.int64) for i in indices] or [np.zeros(0, np.int64)])
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in indices])]).astype(np.int64)
    return cls(x[rows], y[rows], offsets)

  @classmethod
  def from_padded(cls, x: np.ndarray, y: np.ndarray, num_examples) -> ClientArrays:
    """From the padded layout ``[num_clients, max_examples, ...]``: client ``k``'s first
    ``num_examples[k]`` rows."""
    counts = np.asarray(num_examples, np.int64)
    real = np.arange(x.shape[1])[None] < counts[:, None]
    return cls(x[real], y[real], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))

  @classmethod
  def load(cls, folder, name: str, mmap: bool = True) -> ClientArrays:
    """The arrays ``save(folder, name)`` wrote, memory-mapped read-only when ``mmap``."""
    folder, mode = pathlib.Path(folder), "r" if mmap else None
    part = lambda field: np.load(folder / f"{name}_{field}.npy", mmap_mode=mode)
    return cls(part("x"), part("y"), np.asarray(part("offsets")))

  def save(self, folder, name: str) -> None:
    """``folder/{name}_{x,y,offsets}.npy`` (``load`` reads them back)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for field in ("x", "y", "offsets"):
      np.save(folder / f"{name}_{field}.npy", getattr(self, field))

  def __post_init__(self):
    offsets = np.asarray(self.offsets)
    if (
      offsets.ndim != 1
      or len(offsets) < 1
      or offsets[0] != 0
      or offsets[-1] != len(self.x)
      or (np.diff(offsets) < 0).any()
    ):
      raise ValueError(
        f"data: offsets must rise from 0 to the {len(self.x)} rows of x, got "
        f"{len(offsets)} offsets ending at {offsets[-1] if len(offsets) else None}"
      )
    if len(self.y) != len(self.x):
      raise ValueError(f"data: {len(self.x)} rows of x but {len(self.y)} of y")

  @functools.cached_property
  def num_examples(self) -> np.ndarray:
    """``[num_clients]`` int32: each client's example count."""
    return np.diff(self.offsets).astype(np.int32)

  def gather(self, client_ids) -> tuple[np.ndarray, np.ndarray]:
    rows = self.rows(np.asarray(client_ids, np.int64))
    return self.x[rows], self.y[rows]

  def first_input(self) -> np.ndarray:
    return np.asarray(self.x[:1])

  def rows(self, client_ids, limit: int = 0) -> np.ndarray:
    """The flat row indices of ``client_ids``' examples, client after client, in that order
    (each client's first ``limit`` when ``limit > 0``)."""
    starts, counts = self.offsets[client_ids], np.diff(self.offsets)[client_ids]
    if limit > 0:
      counts = np.minimum(counts, limit)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + within

  def client_of_rows(self) -> np.ndarray:
    """``[total]``: the client each row belongs to."""
    return np.repeat(np.arange(self.num_clients), np.diff(self.offsets))

  def select(self, client_ids) -> ClientArrays:
    """Only ``client_ids``, in that order (their rows copied)."""
    counts = np.diff(self.offsets)[np.asarray(client_ids, np.int64)]
    rows = self.rows(np.asarray(client_ids, np.int64))
    return ClientArrays(self.x[rows], self.y[rows], np.concatenate([[0], np.cumsum(counts)]))

  def replace_rows(self, x: np.ndarray | None = None, y: np.ndarray | None = None) -> ClientArrays:
    """The same clients with new flat ``x`` and/or ``y`` (as many rows)."""
    return ClientArrays(self.x if x is None else x, self.y if y is None else y, self.offsets)

  def nbytes(self) -> int:
    return int(self.x.nbytes + self.y.nbytes + self.offsets.nbytes)


@dataclasses.dataclass(frozen=True)
class FirstExamples(ClientStore):
  """Each client of ``store`` cut to its first ``limit`` examples (``data.max_client_examples``
  on a given federation: Reddi et al.'s 1,000 StackOverflow examples a client), read where
  they lie: nothing is copied, and a gather reads only the rows it returns."""

  store: ClientArrays
  limit: int

  @functools.cached_property
  def num_examples(self) -> np.ndarray:
    return np.minimum(self.store.num_examples, self.limit).astype(np.int32)

  def gather(self, client_ids) -> tuple[np.ndarray, np.ndarray]:
    rows = self.store.rows(np.asarray(client_ids, np.int64), self.limit)
    return self.store.x[rows], self.store.y[rows]

  def first_input(self) -> np.ndarray:
    return self.store.first_input()


@dataclasses.dataclass(frozen=True)
class ProcessShard(ClientStore):
  """The clients ``k`` with ``k % count == process`` of a store of ``len(num_examples)``
  clients; ``num_examples`` stays every client's (cohort sampling and weighting need them).
  ``local`` holds the rows: only this process's clients (``local`` client ``k // count``;
  ``compact``) or the whole store, when that costs no memory of its own (a memory map,
  clients made on demand: only what is gathered is read)."""

  local: ClientStore
  counts: np.ndarray
  process: int
  count: int
  compact: bool

  @classmethod
  def of(cls, store: ClientStore, process: int, count: int) -> ProcessShard:
    """``process``'s shard of ``store``: a copy of its own clients' rows when ``store`` holds
    its rows in memory, else ``store`` itself, read only at its own clients."""
    if not 0 <= process < count:
      raise ValueError(f"process must be in [0, {count}), got {process}")
    in_memory = isinstance(store, ClientArrays) and not isinstance(store.x, np.memmap)
    if in_memory:
      local = store.select(np.arange(process, store.num_clients, count))
      return cls(local, store.num_examples, process, count, True)
    return cls(store, store.num_examples, process, count, False)

  @property
  def num_examples(self) -> np.ndarray:
    return self.counts

  def owner(self, client_ids) -> np.ndarray:
    return np.asarray(client_ids, np.int64) % self.count

  def gather(self, client_ids) -> tuple[np.ndarray, np.ndarray]:
    client_ids = np.asarray(client_ids, np.int64)
    foreign = client_ids[self.owner(client_ids) != self.process]
    if len(foreign):
      raise ValueError(
        f"data: process {self.process} of {self.count} holds the clients k % {self.count} == "
        f"{self.process}, not client {foreign[0]}"
      )
    return self.local.gather(client_ids // self.count if self.compact else client_ids)

  def first_input(self) -> np.ndarray:
    return self.local.first_input()
