"""Federations converted once from their shipped files into the ragged store, then memory-mapped.

``load_converted(folder, files, convert)``: the first call runs ``convert()`` (``-> (train,
test, global_x, global_y, meta)``) and saves its result in ``folder/.fedjax_lab/``; later calls
memory-map that cache, and rebuild it when one of ``files`` changes name, size or time, or the
options that shaped it change. LEAF's
JSON and TFF's HDF5 loaders (``leaf.py``, ``tff.py``) go through it.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
from collections.abc import Callable

import numpy as np

from fedjax_lab.data.federated import FederatedData
from fedjax_lab.data.ragged import ClientArrays

CACHE = ".fedjax_lab"

# convert() -> (train, test, global_x, global_y, meta); meta holds "num_classes" and anything
# worth keeping (client names), JSON-serializable
Converter = Callable[[], tuple[ClientArrays, ClientArrays, np.ndarray, np.ndarray, dict]]


def fingerprint(files: list[pathlib.Path], options: dict) -> str:
  stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
  return hashlib.sha256(json.dumps([stats, options], sort_keys=True).encode()).hexdigest()[:16]


def load_converted(
  folder, files: list[pathlib.Path], convert: Converter, options: dict | None = None
) -> FederatedData:
  """The federation ``convert`` makes from ``files`` with ``options`` (what else shapes the
  result, e.g. the label kind), from the cache in ``folder`` (module docstring)."""

  def convert_into(cache: pathlib.Path) -> dict:
    train, test, global_x, global_y, meta = convert()
    train.save(cache, "train")
    test.save(cache, "test")
    np.save(cache / "global_x.npy", global_x)
    np.save(cache / "global_y.npy", global_y)
    return meta

  return load_streamed(folder, files, convert_into, options)


def load_streamed(
  folder, files: list[pathlib.Path], convert_into: Callable[[pathlib.Path], dict], options=None
) -> FederatedData:
  """``load_converted`` for a conversion that writes the cache itself, a client at a time
  (``ragged.ClientArraysWriter``): ``convert_into(cache)`` writes ``train_*``, ``test_*``,
  ``global_x.npy`` and ``global_y.npy`` there and returns the meta. ``meta.json`` is written
  last, so a conversion that stopped part-way is continued by the next call (the writers keep
  their progress), never taken for a finished one; a cache of other files or options is
  started afresh."""
  cache = pathlib.Path(folder) / CACHE
  meta_path, stamp = cache / "meta.json", fingerprint(files, options or {})
  stamp_path = cache / "converting.json"
  recorded = json.loads(meta_path.read_text()) if meta_path.exists() else {}
  if recorded.get("fingerprint") != stamp:
    if meta_path.exists() or (stamp_path.exists() and stamp_path.read_text() != stamp):
      shutil.rmtree(cache)  # another conversion's cache: start over
    cache.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(stamp)
    meta = convert_into(cache)
    meta_path.write_text(json.dumps({**meta, "fingerprint": stamp}))
    stamp_path.unlink()
  meta = json.loads(meta_path.read_text())
  return FederatedData(
    ClientArrays.load(cache, "train"),
    ClientArrays.load(cache, "test"),
    np.load(cache / "global_x.npy", mmap_mode="r"),
    np.load(cache / "global_y.npy", mmap_mode="r"),
    meta["num_classes"],
    label_sets=meta.get("label_sets", False),
  )
