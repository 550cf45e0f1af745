"""Data sources. Each returns a pooled ``Dataset``; partitioners then split it into clients.

Offline (no network): ``digits`` (scikit-learn), ``fashion_mnist_idx`` (local IDX files, e.g.
Debian's ``dataset-fashion-mnist``), ``synthetic`` (FedProx/LEAF Synthetic(alpha, beta)) and
``shakespeare`` (local plain-text plays, next-character prediction), ``shakespeare_genre`` (the
same plays, text windows classified by genre). Online or pre-downloaded:
``tfds:<catalog name>`` through ``tfds.data_source`` (array_record, no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import re

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
TFDS_DATASETS = ("mnist", "fashion_mnist", "emnist", "cifar10", "cifar100")
# Genres of the First Folio (comedy, history, tragedy; Pericles, not in the Folio, a comedy).
GENRES = ("comedy", "history", "tragedy")
_PLAY_GENRES = {
  "comedy": (
    "alls_well_that_ends_well",
    "as_you_like_it",
    "comedy_of_errors",
    "loves_labours_lost",
    "measure_for_measure",
    "merchant_of_venice",
    "merry_wives_of_windsor",
    "midsummer_nights_dream",
    "much_ado_about_nothing",
    "taming_of_the_shrew",
    "tempest",
    "twelfth_night",
    "two_gentlemen_of_verona",
    "winters_tale",
    "pericles",
  ),
  "history": (
    "henry_iv_part_1",
    "henry_iv_part_2",
    "henry_v",
    "henry_vi_part_1",
    "henry_vi_part_2",
    "henry_vi_part_3",
    "henry_viii",
    "john",
    "richard_ii",
    "richard_iii",
  ),
  "tragedy": (
    "antony_and_cleopatra",
    "coriolanus",
    "cymbeline",
    "hamlet",
    "julius_caesar",
    "lear",
    "macbeth",
    "othello",
    "romeo_and_juliet",
    "timon_of_athens",
    "tragedy_of_titus_andronicus",
    "troilus_and_cressida",
  ),
}
PLAY_GENRE = {play: GENRES.index(genre) for genre, plays in _PLAY_GENRES.items() for play in plays}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Pooled arrays. ``train_groups`` (optional) are natural client ids (writer, speaker...)."""

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  train_groups: np.ndarray | None = None
  group_names: tuple[str, ...] = ()

  def __post_init__(self):
    """Every source is checked for consistency once, where it is made."""
    for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
      if len(x) != len(y):
        raise ValueError(f"data source: {len(x)} {split} inputs but {len(y)} {split} labels")
      if len(y) and not (0 <= np.min(y) and np.max(y) < self.num_classes):
        raise ValueError(
          f"data source: {split} labels must lie in [0, {self.num_classes}), got "
          f"[{np.min(y)}, {np.max(y)}]"
        )
    if self.train_groups is not None and len(self.train_groups) != len(self.train_y):
      raise ValueError(
        f"data source: {len(self.train_groups)} group ids for {len(self.train_y)} examples"
      )


def _holdout(num_examples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  order = np.random.default_rng(seed).permutation(num_examples)
  num_test = int(round(fraction * num_examples))
  return np.sort(order[num_test:]), np.sort(order[:num_test])


def digits(seed: int = 0) -> Dataset:
  """scikit-learn's 1,797 8x8 digits in [0, 1], ``[N, 8, 8, 1]``; a fixed 20% global test set."""
  from sklearn.datasets import load_digits

  bunch = load_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]
  y = bunch.target.astype(np.int32)
  train, test = _holdout(len(y), 0.2, seed)
  return Dataset(x[train], y[train], x[test], y[test], num_classes=10)


def _read_idx(path: pathlib.Path) -> np.ndarray:
  """A gzipped IDX array of unsigned bytes (magic ``0x00000803`` or ``0x00000801``)."""
  damaged = f"{path} is damaged (run `make data` again)"
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as error:  # BadGzipFile is an OSError
    raise ValueError(f"{damaged}: {error}") from None
  if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 4:
    raise ValueError(f"{damaged}: not an IDX file of unsigned bytes")
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  if len(raw) != 4 + 4 * ndim + int(np.prod(shape)):
    raise ValueError(f"{damaged}: holds {len(raw)} bytes, its header announces shape {shape}")
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_idx(directory: str | None = None) -> Dataset:
  """Fashion-MNIST from the four IDX ``.gz`` files, ``[N, 28, 28, 1]`` in [0, 1]."""
  root = pathlib.Path(
    directory or os.environ.get("FEDJAX_LAB_FASHION_MNIST_DIR", FASHION_MNIST_DIR)
  )
  files = {
    split: (root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz")
    for split in ("train", "t10k")
  }
  missing = [str(p) for pair in files.values() for p in pair if not p.exists()]
  if missing:
    raise FileNotFoundError(
      f"data.source='fashion_mnist_idx' needs the IDX files {missing}; run `make data` "
      "(installs Debian's dataset-fashion-mnist) or set FEDJAX_LAB_FASHION_MNIST_DIR"
    )
  arrays = {}
  for split, (images_file, labels_file) in files.items():
    images, labels = _read_idx(images_file), _read_idx(labels_file)
    if len(images) != len(labels) or images.ndim != 3 or labels.ndim != 1:
      raise ValueError(
        f"{images_file} holds images of shape {images.shape} but {labels_file} labels of shape "
        f"{labels.shape}: one label per 2-D image expected"
      )
    arrays[split] = ((images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int32))
  return Dataset(*arrays["train"], *arrays["t10k"], num_classes=10)


def synthetic(
  alpha: float,
  beta: float,
  num_clients: int,
  seed: int,
  *,
  dim: int = 60,
  num_classes: int = 10,
  iid: bool = False,
) -> Dataset:
  """Synthetic(alpha, beta) of Li et al. (FedProx, 2020), as LEAF generates it.

  Client k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k, b_k ~ N(u_k, 1); v_k[j] ~ N(B_k, 1);
  x ~ N(v_k, diag(j^-1.2)); y = argmax(W_k x + b_k). Sizes ~ lognormal(4, 2) + 50.
  ``iid`` uses one shared (W, b) and v = 0. ``train_groups`` are the generating clients;
  10% of each client's examples form the global test set.
  """
  if alpha < 0 or beta < 0:
    raise ValueError(
      f"data.synthetic.alpha and data.synthetic.beta must be >= 0, got {alpha}, {beta}"
    )
  rng = np.random.default_rng(seed)
  sizes = (rng.lognormal(4, 2, num_clients).astype(int) + 50).clip(max=2000)
  shared = (rng.normal(0, 1, (dim, num_classes)), rng.normal(0, 1, num_classes), np.zeros(dim))
  xs, ys, groups = [], [], []
  for k, size in enumerate(sizes):
    x, y = synthetic_client(rng, size, alpha, beta, dim, num_classes, shared if iid else None)
    xs.append(x)
    ys.append(y)
    groups.append(np.full(size, k))
  x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
  train, test = _holdout(len(y), 0.1, seed + 1)
  return Dataset(
    x[train],
    y[train],
    x[test],
    y[test],
    num_classes,
    train_groups=g[train],
    group_names=tuple(f"client_{k}" for k in range(num_clients)),
  )


def synthetic_client(
  rng: np.random.Generator,
  size: int,
  alpha: float,
  beta: float,
  dim: int,
  num_classes: int,
  shared: tuple | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """One Synthetic(alpha, beta) client's ``size`` examples drawn from ``rng`` (``synthetic``'s
  docstring); ``shared``: its ``(W, b, v)`` given (the iid variant) instead of drawn."""
  if shared is None:
    u, big_b = rng.normal(0, np.sqrt(alpha)), rng.normal(0, np.sqrt(beta))
    w, b = rng.normal(u, 1, (dim, num_classes)), rng.normal(u, 1, num_classes)
    v = rng.normal(big_b, 1, dim)
  else:
    w, b, v = shared
  cov_diag = np.arange(1, dim + 1, dtype=np.float64) ** -1.2
  x = rng.normal(v, np.sqrt(cov_diag), (size, dim))
  return x.astype(np.float32), np.argmax(x @ w + b, axis=1).astype(np.int32)


SHAKESPEARE_VOCAB = (
  "\x00\x01" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-()[]&\n"
)
_SPEAKER = re.compile(r"^([A-Z][A-Za-z]*(?: [A-Za-z]+){0,3})\.$")


def parse_play(text: str) -> list[tuple[str, str]]:
  """(speaker, speech) pairs of a Gutenberg play: a speaker line ``Name.`` then the speech."""
  speeches = []
  for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
    lines = block.strip().split("\n")
    match = _SPEAKER.match(lines[0].strip())
    if match and len(lines) > 1:
      speeches.append((match.group(1), " ".join(line.strip() for line in lines[1:])))
  return speeches


def encode_text(text: str) -> np.ndarray:
  """Characters to ids in ``SHAKESPEARE_VOCAB`` (0 is padding, 1 is out-of-vocabulary)."""
  lookup = {c: i for i, c in enumerate(SHAKESPEARE_VOCAB)}
  return np.array([lookup.get(c, 1) for c in text], np.int32)


def shakespeare(
  directory: str, *, sequence_length: int = 80, min_chars: int = 1000, seed: int = 0
) -> Dataset:
  """Next-character prediction on plays, one natural group per (play, speaking character).

  Each character's speeches are concatenated and cut into windows of ``sequence_length + 1``
  ids: ``x`` is the first ``sequence_length``, ``y`` the same shifted by one. Characters with
  fewer than ``min_chars`` characters of speech are dropped. 10% of windows form the test set.
  """
  root = pathlib.Path(directory)
  plays = sorted(
    p for p in root.glob("*.txt") if not p.stem.endswith("_f") and p.name != "metadata.txt"
  )
  if not plays:
    raise FileNotFoundError(
      f"data.source_dir={directory!r} holds no plain-text plays; run `make data`"
    )
  windows, groups, names = [], [], []
  for play in plays:
    by_speaker: dict[str, list[str]] = {}
    for speaker, speech in parse_play(play.read_text(encoding="latin-1")):
      by_speaker.setdefault(speaker, []).append(speech)
    for speaker, speeches in sorted(by_speaker.items()):
      ids = encode_text(" ".join(speeches))
      count = len(ids) // (sequence_length + 1)
      if len(ids) < min_chars or count == 0:
        continue
      windows.append(ids[: count * (sequence_length + 1)].reshape(count, sequence_length + 1))
      groups.append(np.full(count, len(names)))
      names.append(f"{play.stem.removesuffix('_gut')}/{speaker}")
  if not windows:
    raise ValueError(
      f"data.source_dir={directory!r}: none of its {len(plays)} .txt files ({plays[0].name}, "
      f"...) holds a play with a speaker of {min_chars}+ characters of speech (a speaker line "
      "'Name.' then the speech, as Gutenberg's plays are written); run `make data`"
    )
  data, group_ids = np.concatenate(windows), np.concatenate(groups)
  train, test = _holdout(len(data), 0.1, seed)
  return Dataset(
    data[train, :-1],
    data[train, 1:],
    data[test, :-1],
    data[test, 1:],
    num_classes=len(SHAKESPEARE_VOCAB),
    train_groups=group_ids[train],
    group_names=tuple(names),
  )


def shakespeare_genre(
  directory: str, *, window: int = 200, hash_buckets: int = 512, seed: int = 0
) -> Dataset:
  """Text classification: which genre (``GENRES``) a ``window``-character piece of a play's
  speeches comes from. Features ``[N, V + hash_buckets]``: character frequencies and
  character-bigram frequencies hashed as ``(a * V + b) mod hash_buckets``, standardized with
  the training windows' mean and standard deviation. ``train_groups`` are play ids
  (``group_names``). 10% of windows form the test set.
  """
  root = pathlib.Path(directory)
  vocab = len(SHAKESPEARE_VOCAB)
  features, labels, plays, names = [], [], [], []
  for play in sorted(root.glob("*.txt")):
    name = play.stem.removesuffix("_gut")
    if name not in PLAY_GENRE:
      continue
    ids = encode_text(
      " ".join(speech for _, speech in parse_play(play.read_text(encoding="latin-1")))
    )
    count = len(ids) // window
    if count == 0:
      continue
    pieces = ids[: count * window].reshape(count, window)
    unigrams = np.stack([np.bincount(p, minlength=vocab) for p in pieces])
    bigrams = np.stack(
      [np.bincount((p[:-1] * vocab + p[1:]) % hash_buckets, minlength=hash_buckets) for p in pieces]
    )
    features.append(np.concatenate([unigrams, bigrams], axis=1) / window)
    labels.append(np.full(count, PLAY_GENRE[name]))
    plays.append(np.full(count, len(names)))
    names.append(name)
  if not features:
    raise FileNotFoundError(
      f"data.source_dir={directory!r} holds no plays of a known genre; run `make data`"
    )
  x, y, groups = np.concatenate(features), np.concatenate(labels), np.concatenate(plays)
  train, test = _holdout(len(y), 0.1, seed)
  mean, std = x[train].mean(0), x[train].std(0) + 1e-6
  x = ((x - mean) / std).astype(np.float32)
  return Dataset(
    x[train],
    y[train].astype(np.int32),
    x[test],
    y[test].astype(np.int32),
    num_classes=len(GENRES),
    train_groups=groups[train],
    group_names=tuple(names),
  )


def tfds_source(
  name: str, *, data_dir: str | None = None, coarse_labels: bool = False, download: bool = False
) -> Dataset:
  """A TFDS image-classification dataset read through ``tfds.data_source`` (array_record).

  ``name`` is a catalog name (``mnist``, ``fashion_mnist``, ``emnist/byclass``, ``cifar10``,
  ``cifar100``, ...). ``coarse_labels`` selects CIFAR-100's 20 super-classes. Images are
  scaled to [0, 1], ``[N, H, W, C]``.
  """
  import tensorflow_datasets as tfds

  if name.split("/")[0] not in TFDS_DATASETS:
    raise ValueError(
      f"data.source='tfds:{name}' is not supported; allowed: "
      f"{', '.join('tfds:' + n for n in TFDS_DATASETS)}"
    )
  if coarse_labels and not name.startswith("cifar100"):
    raise ValueError("data.coarse_labels is only meaningful for tfds:cifar100")
  label_key = "coarse_label" if coarse_labels else "label"
  if data_dir is not None and not pathlib.Path(data_dir).is_dir():
    raise FileNotFoundError(f"data.source_dir={data_dir!r} is not a folder")
  try:
    splits = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=download)
  except Exception as error:  # tfds reports a missing preparation as KeyError, AssertionError...
    where = data_dir or "TFDS's default data folder"
    raise FileNotFoundError(
      f"data.source='tfds:{name}' is not prepared in {where} ({type(error).__name__}); "
      f"prepare it where it can be downloaded (`tfds build {name} --data_dir DIR`), copy DIR "
      "here and set data.source_dir=DIR"
    ) from error
  arrays = []
  for split in splits:
    examples = [split[i] for i in range(len(split))]
    arrays.append(np.stack([e["image"] for e in examples]).astype(np.float32) / 255.0)
    arrays.append(np.array([e[label_key] for e in examples], np.int32))
  num_classes = splits[0].dataset_info.features[label_key].num_classes
  return Dataset(*arrays, num_classes=num_classes)
