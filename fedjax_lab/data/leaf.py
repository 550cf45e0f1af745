"""LEAF's JSON federations (FEMNIST, Shakespeare, Synthetic, Sent140, Reddit, CelebA) into the
ragged store.

LEAF (Caldas et al., 2018) writes each split as JSON files in ``<dir>/train/`` and
``<dir>/test/``, each holding ``{"users": [...], "num_samples": [...], "user_data": {user:
{"x": [...], "y": [...]}}}``. One client per user of the train files, in the files' order; its
test split is its examples in the test files (none if it has none there); the user names are
kept in the cache's ``meta.json``. The global test set pools every test user's examples,
those of users absent from the training files included. A file not in this layout, a label
that is not a class id, or CelebA without its image folder is one line naming the file, user or
folder.
Examples by kind, recognised from the first ``x``:

- a string (Shakespeare): ``x`` the 80 characters, ``y`` the next one; stored as next-character
  sequences over ``SHAKESPEARE_VOCAB``, ``x = ids[:-1]``, ``y = ids[1:]`` of ``x + y``;
- 784 numbers (FEMNIST): a 28x28x1 image, 62 classes;
- any other list of numbers (Synthetic): a feature vector, ``max(y) + 1`` classes;
- five strings (Sent140: tweet id, date, query, user, text; ``y`` 0 or 1): the text's words
  (``words``: runs of letters, digits and apostrophes, and each of ``.,!?;``, case kept, as
  LEAF's own models split them) as ``data.leaf.words`` token ids, 0 padding the rest, 1 a word
  outside the vocabulary, 2.. the vocabulary's words in its order. The vocabulary is
  ``data.leaf.vocab_file`` (one word a line), or else the ``data.leaf.vocab_size`` words most
  frequent among the training users' tweets (ties by first appearance); 2 classes;
- a list of token lists (Reddit: ``x`` a comment as LEAF's preprocessing cuts it, windows of
  10 tokens padded with ``<PAD>``; ``y`` a record whose ``target_tokens`` are the same windows
  shifted by one token): one example per window, ``x`` its token ids, ``y`` its targets' ids,
  0 for ``<PAD>``, 1 for a token outside the vocabulary (``<UNK>``), 2.. the vocabulary's
  tokens (``data.leaf.vocab_file``, or the ``data.leaf.vocab_size`` most frequent tokens of
  the training users' windows, ``<BOS>`` and ``<EOS>`` among them, as LEAF's
  ``build_vocab.py`` counts them); ``vocabulary + 2`` classes, a next-token task. Where we
  differ: LEAF leaves padded positions out of its loss (``count_tokens``) and counts a
  predicted ``<PAD>`` or ``<UNK>`` as wrong; we count every position, as for Shakespeare;
- an image file name (CelebA: ``y`` 0 or 1, smiling or not): the image of that name in
  ``data.leaf.image_dir`` (default ``<data.source_dir>/raw/img_align_celeba``, where LEAF's
  scripts put CelebA's aligned images), resized to 84x84 RGB in [0, 1] as LEAF's CelebA model
  reads it; 2 classes.

Parsing JSON is slow, so the first load converts the files once into ``<dir>/.fedjax_lab/``
(``converted.py``); later loads memory-map that cache, and rebuild it when a JSON file's name,
size or time changes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import re

import numpy as np

from fedjax_lab.checks import require
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
  """``{user: (xs, ys)}`` over ``files``, in their order; a file not in LEAF's layout is one
  ``ValueError`` naming it and what is wrong."""
  users = {}
  for path in files:
    try:
      content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      raise ValueError(f"{path}: not JSON ({error})") from None
    listed = content.get("users") if isinstance(content, dict) else None
    if not isinstance(listed, list) or not all(isinstance(u, str) for u in listed):
      raise ValueError(f"{path}: 'users' must be a list of user names (LEAF's layout)")
    user_data = content.get("user_data")
    if not isinstance(user_data, dict):
      raise ValueError(f"{path}: 'user_data' must be a table of each user's x and y")
    for user in listed:
      record = user_data.get(user)
      if not isinstance(record, dict) or not all(
        isinstance(record.get(k), list) for k in ("x", "y")
      ):
        raise ValueError(f"{path}: user {user!r} has no user_data entry with lists x and y")
      if len(record["x"]) != len(record["y"]):
        raise ValueError(f"{path}: user {user!r} has {len(record['x'])} x and {len(record['y'])} y")
      xs, ys = users.setdefault(user, ([], []))
      xs.extend(record["x"])
      ys.extend(record["y"])
  if not users:
    raise ValueError(f"{files[0].parent}: the LEAF files list no users")
  return users


TWEET_FIELDS = 5  # Sent140's x: tweet id, date, query, user, text
_WORD = re.compile(r"[\w']+|[.,!?;]")


def words(text: str) -> list[str]:
  """A tweet's words, as LEAF's Sent140 models split them (module docstring)."""
  return _WORD.findall(text)


@dataclasses.dataclass(frozen=True)
class Reading:
  """What turns a dataset's raw examples into arrays beyond the examples themselves: the
  ``vocab`` of Sent140 and Reddit, Sent140's ``words`` per tweet, CelebA's ``image_dir``."""

  vocab: Vocabulary | None = None
  words: int = 0
  image_dir: pathlib.Path | None = None


CELEBA_SIZE = 84  # LEAF's CelebA model reads 84x84 RGB images


def celeba_image(image_dir: pathlib.Path, name: str, where: str) -> np.ndarray:
  """``[84, 84, 3]`` float32 in [0, 1]: the image ``name`` of ``image_dir``, resized and made
  RGB as LEAF's CelebA model does."""
  from PIL import Image

  path = image_dir / name
  if not path.is_file():
    raise ValueError(f"{where}: image {name!r} is not in data.leaf.image_dir={str(image_dir)!r}")
  with Image.open(path) as image:
    resized = image.resize((CELEBA_SIZE, CELEBA_SIZE)).convert("RGB")
    return np.asarray(resized, np.float32) / 255.0


class Vocabulary:
  """Sent140's and Reddit's words -> token ids (module docstring): ``tokens(text, length)`` for a
  tweet, ``token_ids(tokens)`` for a Reddit window."""

  def __init__(self, words: tuple[str, ...]):
    self.words = words
    self.ids = {word: index + 2 for index, word in enumerate(words)}

  def tokens(self, text: str, length: int) -> np.ndarray:
    row = np.zeros(length, np.int32)
    kept = [self.ids.get(word, 1) for word in words(text)[:length]]
    row[: len(kept)] = kept
    return row

  def token_ids(self, tokens: list) -> list[int]:
    """Ids of LEAF Reddit tokens: ``<PAD>`` 0, a token outside the vocabulary 1."""
    return [0 if token == REDDIT_PAD else self.ids.get(token, 1) for token in tokens]


REDDIT_PAD = "<PAD>"


def vocabulary(kind: str, train_users: dict, size: int, vocab_file: str = "") -> Vocabulary:
  """``vocab_file``'s words, or the ``size`` most frequent among the training users' tweets
  (``kind="tweet"``) or Reddit windows' tokens (``"reddit"``, ``<PAD>`` left out)."""
  if vocab_file:
    path = pathlib.Path(vocab_file).expanduser()
    if not path.is_file():
      raise ValueError(f"data.leaf.vocab_file={vocab_file!r}: no such file (one word a line)")
    return Vocabulary(tuple(line.strip() for line in path.read_text().splitlines() if line.strip()))
  if kind == "tweet":
    seen = (word for xs, _ in train_users.values() for x in xs for word in words(x[-1]))
  else:
    seen = (
      token
      for xs, _ in train_users.values()
      for comment in xs
      for window in comment
      for token in window
      if token != REDDIT_PAD
    )
  return Vocabulary(tuple(word for word, _ in collections.Counter(seen).most_common(size)))


def _kind(xs: list, where: str) -> str:
  """``text`` (Shakespeare), ``tweet`` (Sent140), ``reddit``, ``image`` (CelebA),
  ``features`` (FEMNIST, Synthetic) or one line refusing what no LEAF dataset read here holds,
  from a first example ``xs``."""
  supported = "read: FEMNIST, Shakespeare, Synthetic, Sent140, Reddit and CelebA"
  if isinstance(xs, str):
    return "image" if xs.lower().endswith((".jpg", ".jpeg", ".png")) else "text"
  if isinstance(xs, list) and xs and all(isinstance(v, (int, float)) for v in xs):
    return "features"
  if isinstance(xs, list) and len(xs) == TWEET_FIELDS and all(isinstance(v, str) for v in xs):
    return "tweet"
  if isinstance(xs, list) and xs and all(isinstance(v, list) for v in xs):
    if all(isinstance(t, str) for window in xs for t in window):
      return "reddit"
  if isinstance(xs, list) and xs and any(isinstance(v, (str, list)) for v in xs):
    raise ValueError(f"{where}: x holds lists of strings, not read; {supported}")
  raise ValueError(f"{where}: x is {str(xs)[:40]!r}, no LEAF dataset this reads ({supported})")


def _labels(ys: list, where: str) -> np.ndarray:
  """Class ids: integers >= 0 (``7.0`` is 7); a label such as ``7.6`` or ``"7"`` is refused."""
  for label in ys:
    if isinstance(label, bool) or not isinstance(label, (int, float)) or label != int(label):
      raise ValueError(f"{where}: label {label!r} is not a class id (an integer >= 0)")
    if label < 0:
      raise ValueError(f"{where}: label {label!r} is not a class id (an integer >= 0)")
  return np.asarray(ys, np.int64).astype(np.int32)


def _reddit_windows(xs: list, ys: list, where: str, vocab: Vocabulary):
  """A Reddit user's comments as ``(x, y)`` id windows (module docstring)."""
  inputs, targets = [], []
  for comment, record in zip(xs, ys):
    shifted = record.get("target_tokens") if isinstance(record, dict) else None
    if not isinstance(comment, list) or not isinstance(shifted, list):
      raise ValueError(f"{where}: every Reddit y must be a record with its target_tokens")
    if len(shifted) != len(comment):
      raise ValueError(f"{where}: a comment has {len(comment)} windows, its targets {len(shifted)}")
    inputs += [vocab.token_ids(window) for window in comment]
    targets += [vocab.token_ids(window) for window in shifted]
  if len({len(row) for row in inputs + targets}) > 1:
    raise ValueError(f"{where}: Reddit windows of different lengths")
  return np.asarray(inputs, np.int32), np.asarray(targets, np.int32)


def _encode(xs: list, ys: list, where: str, reading: Reading) -> tuple[np.ndarray, np.ndarray]:
  """One client's examples as arrays (module docstring, by kind); ``where`` names the client
  in a refusal."""
  if not xs:
    return np.zeros((0,), np.float32), np.zeros((0,), np.int32)
  kind = _kind(xs[0], where)
  if kind == "reddit":
    return _reddit_windows(xs, ys, where, reading.vocab)
  if kind == "image":
    labels = _labels(ys, where)
    if labels.max(initial=0) > 1 or not all(isinstance(x, str) for x in xs):
      raise ValueError(f"{where}: CelebA's x are image file names and its labels 0 or 1")
    return np.stack([celeba_image(reading.image_dir, x, where) for x in xs]), labels
  if kind == "tweet":
    vocab, length = reading.vocab, reading.words
    if not all(isinstance(x, list) and len(x) == TWEET_FIELDS for x in xs):
      raise ValueError(f"{where}: every Sent140 x must be its {TWEET_FIELDS} strings")
    labels = _labels(ys, where)
    if labels.max(initial=0) > 1:
      raise ValueError(f"{where}: Sent140's labels are 0 or 1, got {int(labels.max())}")
    return np.stack([vocab.tokens(str(x[-1]), length) for x in xs]), labels
  if kind == "text":
    if not all(isinstance(v, str) for v in xs + ys):
      raise ValueError(f"{where}: Shakespeare's x and y must all be strings")
    ids = np.stack([encode_text(x + y) for x, y in zip(xs, ys)])
    return ids[:, :-1], ids[:, 1:]
  try:
    x = np.asarray(xs, np.float32)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: the examples' x are not lists of numbers of one length") from None
  if x.ndim != 2:
    raise ValueError(f"{where}: the examples' x are not lists of numbers of one length")
  if x.shape[1] == FEMNIST_PIXELS:
    x = x.reshape(-1, 28, 28, 1)
  return x, _labels(ys, where)


def _split(users: list[str], examples: dict, like: tuple, split: str, reading) -> ClientArrays:
  """The clients ``users`` (their ``examples``, or none) as one ``ClientArrays``; ``like``:
  the ``(x, y)`` of a non-empty client, whose row shapes an empty one takes."""
  parts = [_encode(*examples.get(u, ([], [])), f"{split} user {u!r}", reading) for u in users]
  shape_of = lambda part, index: (
    part[index].shape[1:] if len(part[index]) else like[index].shape[1:]
  )
  for user, part in zip(users, parts):
    if len(part[0]) and part[0].shape[1:] != like[0].shape[1:]:
      raise ValueError(
        f"{split} user {user!r}: examples shaped {part[0].shape[1:]}, the first user's are "
        f"{like[0].shape[1:]}"
      )
  xs = [p[0].reshape((len(p[0]),) + shape_of(p, 0)).astype(like[0].dtype) for p in parts]
  ys = [p[1].reshape((len(p[1]),) + shape_of(p, 1)).astype(np.int32) for p in parts]
  offsets = np.concatenate([[0], np.cumsum([len(x) for x in xs])]).astype(np.int64)
  return ClientArrays(np.concatenate(xs), np.concatenate(ys), offsets)


@dataclasses.dataclass(frozen=True)
class LeafOptions:
  """``data.leaf`` (module docstring): Sent140's and Reddit's tokens, ``vocab_size`` words
  kept when the vocabulary is built from the training users, or ``vocab_file``; ``words`` per
  tweet (Sent140); CelebA's ``image_dir`` (empty: ``<data.source_dir>/raw/img_align_celeba``)."""

  vocab_size: int = 10000
  vocab_file: str = ""
  words: int = 25
  image_dir: str = ""

  def __post_init__(self):
    require(self.vocab_size >= 1, "data.leaf.vocab_size", ">= 1", self.vocab_size)
    require(self.words >= 1, "data.leaf.words", ">= 1", self.words)


def _image_dir(folder: pathlib.Path, image_dir: str) -> pathlib.Path:
  """CelebA's image folder (``LeafOptions``), or one line naming the folder looked for."""
  path = pathlib.Path(image_dir).expanduser() if image_dir else folder / "raw" / "img_align_celeba"
  if not path.is_dir():
    raise ValueError(
      f"LEAF CelebA names images, and their folder {str(path)!r} is not there: point "
      "data.leaf.image_dir at CelebA's img_align_celeba/ (LEAF's data/raw/img_align_celeba)"
    )
  return path


def leaf_federation(folder, options: LeafOptions = LeafOptions()) -> FederatedData:
  """The LEAF federation in ``folder`` (``train/`` and ``test/`` JSON), converted once
  (``converted.load_converted``) and memory-mapped. Test users absent from the training files
  (LEAF's ``-t user`` split holds only such) are no client, and their examples are in the
  global test set (``meta.json`` counts them as ``test_only_users``; for Sent140 it holds the
  vocabulary too)."""
  folder = pathlib.Path(folder)
  train_files, test_files = _files(folder, "train"), _files(folder, "test")

  def convert():
    train_examples, test_examples = _users(train_files), _users(test_files)
    users = list(train_examples)
    nonempty = [u for u in users if train_examples[u][0]]
    if not nonempty:
      raise ValueError(f"{folder / 'train'}: no training user has an example")
    kind = _kind(train_examples[nonempty[0]][0][0], f"train user {nonempty[0]!r}")
    reading, meta = Reading(), {}
    if kind in ("tweet", "reddit"):
      vocab = vocabulary(kind, train_examples, options.vocab_size, options.vocab_file)
      reading, meta = Reading(vocab, options.words), {"vocabulary": list(vocab.words)}
    if kind == "image":
      reading = Reading(image_dir=_image_dir(folder, options.image_dir))
    like = _encode(*train_examples[nonempty[0]], f"train user {nonempty[0]!r}", reading)
    train, test = (
      _split(users, train_examples, like, "train", reading),
      _split(users, test_examples, like, "test", reading),
    )
    test_only = [u for u in test_examples if u not in train_examples]
    pooled = _split(users + test_only, test_examples, like, "test", reading)
    if not len(pooled.y):
      raise ValueError(f"{folder / 'test'}: the test files hold no example")
    if kind in ("tweet", "image"):
      num_classes = 2
    elif kind == "reddit":
      num_classes = len(reading.vocab.words) + 2
    elif kind == "text":
      num_classes = len(SHAKESPEARE_VOCAB)
    elif like[0].shape[1:] == (28, 28, 1):
      num_classes = FEMNIST_CLASSES
    else:
      num_classes = int(max(train.y.max(initial=0), pooled.y.max(initial=0))) + 1
    meta.update(num_classes=num_classes, users=users, test_only_users=len(test_only))
    return train, test, pooled.x, pooled.y, meta

  vocab_file = [pathlib.Path(options.vocab_file).expanduser()] if options.vocab_file else []
  files = train_files + test_files + [f for f in vocab_file if f.is_file()]
  return load_converted(folder, files, convert, dataclasses.asdict(options))
