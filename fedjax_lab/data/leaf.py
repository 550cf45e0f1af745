"""LEAF's JSON federations (FEMNIST, Shakespeare, Synthetic) into the ragged store.

LEAF (Caldas et al., 2018) writes each split as JSON files in ``<dir>/train/`` and
``<dir>/test/``, each holding ``{"users": [...], "num_samples": [...], "user_data": {user:
{"x": [...], "y": [...]}}}``. One client per user of the train files, in the files' order; its
test split is its examples in the test files (none if it has none there); the user names are
kept in the cache's ``meta.json``. The global test set pools every client's test split.
Examples by kind, recognised from the first ``x``:

- a string (Shakespeare): ``x`` the 80 characters, ``y`` the next one; stored as next-character
  sequences over ``SHAKESPEARE_VOCAB``, ``x = ids[:-1]``, ``y = ids[1:]`` of ``x + y``;
- 784 numbers (FEMNIST): a 28x28x1 image, 62 classes;
- any other list of numbers (Synthetic): a feature vector, ``max(y) + 1`` classes.

Parsing JSON is slow, so the first load converts the files once into ``<dir>/.fedjax_lab/``
(``converted.py``); later loads memory-map that cache, and rebuild it when a JSON file's name,
size or time changes.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from fedjax_lab.data.converted import load_converted
from fedjax_lab.data.federated import FederatedData
from fedjax_lab.data.ragged import ClientArrays
from fedjax_lab.data.sources import SHAKESPEARE_VOCAB, encode_text

FEMNIST_PIXELS, FEMNIST_CLASSES = 784, 62


def _files(folder: pathlib.Path, split: str) -> list[pathlib.Path]:
  files = sorted((folder / split).glob("*.json"))
  if not files:
    raise FileNotFoundError(
      f"data.source_dir={str(folder)!r} holds no LEAF JSON files in {split}/ (LEAF writes "
      "data/<dataset>/data/train/*.json and test/*.json; point data.source_dir at that data/)"
    )
  return files


def _users(files: list[pathlib.Path]) -> dict:
  """``{user: (xs, ys)}`` over ``files``, in their order."""
  users = {}
  for path in files:
    content = json.loads(path.read_text())
    for user in content["users"]:
      record = content["user_data"][user]
      xs, ys = users.setdefault(user, ([], []))
      xs.extend(record["x"])
      ys.extend(record["y"])
  return users


def _encode(xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
  """One client's examples as arrays (module docstring, by kind)."""
  if not xs:
    return np.zeros((0,), np.float32), np.zeros((0,), np.int32)
  if isinstance(xs[0], str):
    ids = np.stack([encode_text(x + y) for x, y in zip(xs, ys)])
    return ids[:, :-1], ids[:, 1:]
  x = np.asarray(xs, np.float32)
  if x.shape[1] == FEMNIST_PIXELS:
    x = x.reshape(-1, 28, 28, 1)
  return x, np.asarray(ys, np.int32)


def _split(users: list[str], examples: dict, like: tuple) -> ClientArrays:
  """The clients ``users`` (their ``examples``, or none) as one ``ClientArrays``; ``like``:
  the ``(x, y)`` of a non-empty client, whose row shapes an empty one takes."""
  parts = [_encode(*examples.get(user, ([], []))) for user in users]
  shape_of = lambda part, index: (
    part[index].shape[1:] if len(part[index]) else like[index].shape[1:]
  )
  xs = [p[0].reshape((len(p[0]),) + shape_of(p, 0)).astype(like[0].dtype) for p in parts]
  ys = [p[1].reshape((len(p[1]),) + shape_of(p, 1)).astype(np.int32) for p in parts]
  offsets = np.concatenate([[0], np.cumsum([len(x) for x in xs])]).astype(np.int64)
  return ClientArrays(np.concatenate(xs), np.concatenate(ys), offsets)


def leaf_federation(folder) -> FederatedData:
  """The LEAF federation in ``folder`` (``train/`` and ``test/`` JSON), converted once
  (``converted.load_converted``) and memory-mapped."""
  folder = pathlib.Path(folder)
  train_files, test_files = _files(folder, "train"), _files(folder, "test")

  def convert():
    train_examples, test_examples = _users(train_files), _users(test_files)
    users = list(train_examples)
    like = next(_encode(*train_examples[u]) for u in users if train_examples[u][0])
    train, test = _split(users, train_examples, like), _split(users, test_examples, like)
    if isinstance(train_examples[users[0]][0][0], str):
      num_classes = len(SHAKESPEARE_VOCAB)
    elif like[0].shape[1:] == (28, 28, 1):
      num_classes = FEMNIST_CLASSES
    else:
      num_classes = int(max(train.y.max(initial=0), test.y.max(initial=0))) + 1
    return train, test, test.x, test.y, {"num_classes": num_classes, "users": users}

  return load_converted(folder, train_files + test_files, convert)
