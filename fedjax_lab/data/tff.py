"""TFF's HDF5 federated datasets (EMNIST/FEMNIST by writer, Shakespeare, CIFAR-100) into the
ragged store.

TFF ships each split as one HDF5 file, ``examples/<client id>/<feature>`` (one dataset per
feature, one row per example): ``fed_emnist_{train,test}.h5`` (``pixels`` 28x28 float,
``label``; ``fed_emnist_digitsonly_*``, TFF's ``only_digits=True``, has 10 classes),
``fed_cifar100_{train,test}.h5`` (``image`` 32x32x3 uint8, ``label``,
``coarse_label``), ``shakespeare_{train,test}.h5`` (``snippets``: one string per example).
``data.source_dir`` holds one ``*train*.h5`` and one ``*test*.h5``. One client per client of
the train file, in sorted order; its test split is the same client's examples in the test file
(none where the test file does not have it: TFF's CIFAR-100 tests on other clients). The
global test set pools every example of the test file. Features: ``pixels`` -> ``[28, 28, 1]``,
``image`` -> ``[32, 32, 3]`` in [0, 1], labels ``label`` (or ``coarse_label`` with
``data.coarse_labels``); ``snippets`` -> next-character windows as TFF's Shakespeare baseline
preprocesses them (``tff_snippet_windows``): each snippet's UTF-8 bytes as tokens over TFF's
86-character vocabulary, a beginning and an end token around them, zeros padding the last
window, ``x = ids[:-1]``, ``y = ids[1:]`` per window of ``sequence_length + 1``. Where we differ:
TFF's accuracy leaves padded positions out; ours counts every position (the loss, as TFF's,
counts them all). ``tokens`` (StackOverflow: a sentence of space-separated words) -> TFF's
next-word prediction (``stackoverflow_window``): the first ``sequence_length`` words as ids
over a vocabulary of ``data.tff_h5.vocab_size`` words (word i is id i + 1; 0 pads, then the
out-of-vocabulary, beginning and end ids), a beginning id first, an end id after a sentence
shorter than the window, one window a sentence. The vocabulary is the first words of TFF's
``stackoverflow.word_count`` beside the files (most frequent first), else the most frequent
words of the training clients. With ``data.tff_h5.task=tag_prediction``, StackOverflow's other
task (``stackoverflow_tags``): x the words of ``tokens`` then ``title``, cut at
``sequence_length``, as ids for the ``bag_of_words`` model (0 pads, 1 out of vocabulary, word
i is i + 2); y the post's tags (``tags``, ``|``-separated) as up to ``MAX_TAGS`` ids over the
``data.tff_h5.tag_vocab_size`` most frequent tags (TFF's ``stackoverflow.tag_count`` JSON
beside the files, else counted over the training clients), ``-1`` padding; tags outside it
dropped. The engine reads such label sets as multi-label (``ops/losses.py``: sigmoid
cross-entropy, recall at 5). Where we differ: TFF keeps every word of a post in its
frequencies and leaves the out-of-vocabulary words out of them; we keep the first
``sequence_length`` words and learn a weight for the out-of-vocabulary id. Converted once and
memory-mapped (``converted.py``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import sys

import numpy as np

from fedjax_lab.checks import one_of, require
from fedjax_lab.data.converted import load_streamed
from fedjax_lab.data.federated import FederatedData
from fedjax_lab.data.ragged import ClientArraysWriter

EMNIST_CLASSES, EMNIST_DIGITS, CIFAR100_CLASSES, CIFAR100_COARSE = 62, 10, 100, 20
# TFF's Shakespeare characters (tff.simulation.baselines.shakespeare): character i is token
# i + 1; 0 pads, then come the out-of-vocabulary, beginning and end tokens.
TFF_CHARS = (
  "dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
)
TFF_PAD, TFF_OOV, TFF_BOS, TFF_EOS = 0, len(TFF_CHARS) + 1, len(TFF_CHARS) + 2, len(TFF_CHARS) + 3
TFF_SHAKESPEARE_TOKENS = len(TFF_CHARS) + 4
_TFF_TOKEN_OF_BYTE = np.full(256, TFF_OOV, np.int32)
_TFF_TOKEN_OF_BYTE[[ord(c) for c in TFF_CHARS]] = np.arange(1, len(TFF_CHARS) + 1)


def tff_snippet_windows(snippet: bytes, sequence_length: int) -> np.ndarray:
  """``[windows, sequence_length + 1]`` tokens of one snippet as TFF makes them: a beginning
  token, one token per UTF-8 byte (``TFF_OOV`` outside ``TFF_CHARS``), an end token, then
  ``TFF_PAD`` up to a multiple of ``sequence_length + 1``. Every character is kept; a snippet
  shorter than a window gives one padded window."""
  tokens = _TFF_TOKEN_OF_BYTE[np.frombuffer(snippet, np.uint8)]
  tokens = np.concatenate([[TFF_BOS], tokens, [TFF_EOS]]).astype(np.int32)
  split = sequence_length + 1
  padded = np.zeros(-(-len(tokens) // split) * split, np.int32)
  padded[: len(tokens)] = tokens
  return padded.reshape(-1, split)


def _one(folder: pathlib.Path, split: str) -> pathlib.Path:
  files = sorted(folder.glob(f"*{split}*.h5"))
  if len(files) != 1:
    raise FileNotFoundError(
      f"data.source_dir={str(folder)!r} must hold one TFF *{split}*.h5 file, found "
      f"{[f.name for f in files]} (e.g. fed_emnist_{split}.h5, as TFF ships it)"
    )
  return files[0]


def _examples(h5, path: pathlib.Path) -> list[str]:
  """The client ids of a TFF file's ``examples`` group, sorted; one line naming the file
  when it is not in TFF's layout."""
  examples = h5.get("examples")
  if examples is None or not hasattr(examples, "keys"):
    raise ValueError(f"{path}: no 'examples' group (TFF's layout: examples/<client>/<feature>)")
  names = sorted(examples)
  if not names:
    raise ValueError(f"{path}: 'examples' holds no client")
  return names


WORD_COUNTS = "stackoverflow.word_count"  # TFF's file of StackOverflow's words by frequency


def stackoverflow_vocabulary(folder: pathlib.Path, train_file, names, size: int) -> list[str]:
  """The ``size`` words of TFF's ``WORD_COUNTS`` file in ``folder`` (a word and its count a
  line, most frequent first), else the ``size`` most frequent words of the clients ``names``
  of ``train_file`` (ties by first appearance)."""
  counts_file = folder / WORD_COUNTS
  if counts_file.is_file():
    lines = counts_file.read_text().splitlines()
    return [line.split()[0] for line in lines if line.strip()][:size]
  return most_frequent(train_file, names, "tokens", " ", size)


def most_frequent(train_file, names, feature: str, separator: str, size: int) -> list[str]:
  """The ``size`` most frequent items of the clients ``names`` of ``train_file``, each
  example's ``feature`` split at ``separator`` (empty items left out; ties by first
  appearance), read a client at a time."""
  counts = collections.Counter(
    item
    for group in each_group(train_file, names)
    for value in group[feature][()]
    for item in _text(value).split(separator)
    if item
  )
  return [item for item, _ in counts.most_common(size)]


REOPEN_EVERY = 1000  # clients read before an HDF5 file is closed and opened again


def each_group(path, names):
  """The HDF5 group ``examples/<name>`` of each of ``names`` (None for a None name) in
  ``path``, the file opened afresh every ``REOPEN_EVERY`` clients: HDF5 keeps the metadata of
  every group it opened until the file closes, which over StackOverflow's 342,477 clients
  would grow without bound."""
  import h5py

  for start in range(0, len(names), REOPEN_EVERY):
    with h5py.File(path, "r") as h5:
      for name in names[start : start + REOPEN_EVERY]:
        yield None if name is None else h5["examples"][name]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def stackoverflow_window(sentence: str, ids: dict, sequence_length: int) -> np.ndarray:
  """``[sequence_length + 1]`` ids of one sentence as TFF's next-word task makes them: the
  beginning id, the first ``sequence_length`` words (``ids``: word -> id; out of vocabulary
  otherwise), the end id when the sentence is shorter, zeros after."""
  vocab = len(ids)
  oov, bos, eos = vocab + 1, vocab + 2, vocab + 3
  tokens = [ids.get(word, oov) for word in sentence.split(" ")[:sequence_length]]
  if len(tokens) < sequence_length:
    tokens.append(eos)
  row = np.zeros(sequence_length + 1, np.int32)
  row[: len(tokens) + 1] = [bos, *tokens]
  return row


MAX_TAGS = 5  # StackOverflow allows at most five tags a post
TAG_COUNTS = "stackoverflow.tag_count"  # TFF's JSON of StackOverflow's tags and their counts


def stackoverflow_tag_vocabulary(folder: pathlib.Path, train_file, names, size: int) -> list:
  """The ``size`` most frequent tags: by the counts of TFF's ``TAG_COUNTS`` JSON in ``folder``
  (``{tag: count}``), else counted over the clients ``names`` of ``train_file``; ties in
  order of appearance."""
  counts_file = folder / TAG_COUNTS
  if counts_file.is_file():
    counts = collections.Counter(json.loads(counts_file.read_text()))
    return [tag for tag, _ in counts.most_common(size)]
  return most_frequent(train_file, names, "tags", "|", size)


def stackoverflow_tags(post: str, tags: str, word_ids: dict, tag_ids: dict, length: int):
  """One post as TFF's tag-prediction task reads it (module docstring): ``([length] word
  ids, [MAX_TAGS] tag ids)`` of its text (body then title) and its ``|``-separated tags."""
  words = np.zeros(length, np.int32)
  kept = [word_ids.get(word, 0) + 1 for word in post.split()[:length]]
  words[: len(kept)] = kept
  labels = np.full(MAX_TAGS, -1, np.int32)
  known = [tag_ids[t] for t in tags.split("|") if t in tag_ids][:MAX_TAGS]
  labels[: len(known)] = known
  return words, labels


def _stackoverflow_client(group, vocabularies, sequence_length: int):
  """A StackOverflow client's examples for its task (module docstring); ``vocabularies``:
  ``(word -> id, None)`` for next-word prediction, ``(word -> id, tag -> id)`` for tags."""
  word_ids, tag_ids = vocabularies
  sentences = [_text(v) for v in group["tokens"][()]]
  if tag_ids is None:
    rows = [stackoverflow_window(t, word_ids, sequence_length) for t in sentences]
    ids = np.stack(rows) if rows else np.zeros((0, sequence_length + 1), np.int32)
    return ids[:, :-1], ids[:, 1:]
  for field in ("title", "tags"):
    if field not in group:
      raise ValueError(f"{group.file.filename}: client {group.name!r} has no {field!r}")
  posts = zip(sentences, group["title"][()], group["tags"][()])
  rows = [
    stackoverflow_tags(f"{body} {_text(title)}", _text(tags), word_ids, tag_ids, sequence_length)
    for body, title, tags in posts
  ]
  if not rows:
    return np.zeros((0, sequence_length), np.int32), np.zeros((0, MAX_TAGS), np.int32)
  return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def _client(group, label_key: str, sequence_length: int, vocabularies=None):
  """One client's examples from its HDF5 group (module docstring); a group not in the layout
  of a dataset read here is one line naming the file, the client and what was found.
  ``vocabularies``: StackOverflow's (``_stackoverflow_client``)."""
  where = f"{group.file.filename}: client {group.name.rsplit('/', 1)[-1]!r}"
  if not hasattr(group, "keys"):
    raise ValueError(f"{where} is not a group of features")
  if "tokens" in group and vocabularies is not None:
    return _stackoverflow_client(group, vocabularies, sequence_length)
  if "snippets" in group:
    windows = [
      tff_snippet_windows(s if isinstance(s, bytes) else str(s).encode(), sequence_length)
      for s in group["snippets"][()]
    ]
    ids = np.concatenate(windows) if windows else np.zeros((0, sequence_length + 1), np.int32)
    return ids[:, :-1], ids[:, 1:]
  if "pixels" in group:
    x = np.asarray(group["pixels"][()], np.float32)[..., None]
  elif "image" in group:
    x = np.asarray(group["image"][()], np.float32) / 255.0
  else:
    found = ", ".join(sorted(group)) or "nothing"
    raise ValueError(
      f"{where} holds {found}; read: pixels (EMNIST), image (CIFAR-100), snippets "
      "(Shakespeare) or tokens (StackOverflow)"
    )
  if label_key not in group:
    raise ValueError(f"{where} has no {label_key!r} (found {', '.join(sorted(group))})")
  y = np.asarray(group[label_key][()])
  if len(y) != len(x) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(
      f"{where}: {label_key!r} must be {len(x)} integer class ids, got {y.shape} {y.dtype}"
    )
  return x, y.astype(np.int32)


def _rows(group, sequence_length: int) -> int | None:
  """A client's example rows, from its datasets' shapes (snippets: from their lengths, each
  giving ``ceil((bytes + 2) / (sequence_length + 1))`` windows); None for a group not in a
  layout read here (reading it says why)."""
  if hasattr(group, "keys") and "snippets" in group:
    lengths = [len(s if isinstance(s, bytes) else str(s).encode()) for s in group["snippets"][()]]
    return sum(-(-(n + 2) // (sequence_length + 1)) for n in lengths)
  for key in ("tokens", "pixels", "image"):
    if hasattr(group, "keys") and key in group:
      return int(group[key].shape[0])
  return None


def resident_mib() -> float:
  """This process's resident memory now, in MiB (Linux's ``/proc/self/statm``; 0 elsewhere)."""
  try:
    pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
  except (OSError, IndexError, ValueError):
    return 0.0
  return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _write_split(cache, split: str, path, clients: list, convert, shape: tuple, memory: tuple):
  """One split's clients (None: a client without examples here) of the file ``path`` into
  ``cache`` a client at a time (``convert(group) -> (x, y)``; ``ClientArraysWriter``: memory
  follows one client; an interrupted conversion goes on from the last client written), with
  a progress bar on a terminal. ``shape``: ``(sequence_length, rows)``. ``memory``: ``(the
  process's resident MiB when the conversion began, the MiB it may add)``; past that after a
  client, the conversion stops with one line (what it wrote is kept: a larger
  ``data.tff_h5.conversion_memory_mib`` goes on from there)."""
  sequence_length, rows = shape
  started_mib, allowed_mib = memory
  from tqdm.auto import tqdm

  def count(group):
    if group is None:
      return 0
    counted = _rows(group, sequence_length)
    return len(convert(group)[0]) if counted is None else counted  # converting names the fault

  counts = [count(group) for group in each_group(path, clients)]
  writer = ClientArraysWriter(cache, split, counts, *rows)
  (x_shape, x_dtype), (y_shape, _) = rows
  empty = np.zeros((0, *x_shape), x_dtype), np.zeros((0, *y_shape), np.int32)
  bar = tqdm(
    each_group(path, clients[writer.done :]), desc=f"converting {split}", unit="client",
    disable=not sys.stderr.isatty(), initial=writer.done, total=len(clients),
  )  # fmt: skip
  try:
    for k, group in enumerate(bar, start=writer.done):
      writer.write(k, *(empty if group is None else convert(group)))
      if resident_mib() > started_mib + allowed_mib:
        raise ValueError(
          f"data.tff_h5.conversion_memory_mib={allowed_mib}: converting {split} client {k} of "
          f"{path.name} took this process from {started_mib:.0f} to {resident_mib():.0f} MiB; "
          f"the {k + 1} clients converted are kept, and a larger bound goes on from there"
        )
  finally:  # interrupted or not, what is on disk is recorded
    writer.close()


@dataclasses.dataclass(frozen=True)
class TffOptions:
  """``data.tff_h5``: StackOverflow's ``task`` (``next_word`` or ``tag_prediction``),
  ``vocab_size`` words kept (TFF's default 10,000) and ``tag_vocab_size`` tags (TFF's 500);
  ``conversion_memory_mib``, the resident memory a conversion may add to the process
  (``_write_split``)."""

  task: str = "next_word"
  vocab_size: int = 10000
  tag_vocab_size: int = 500
  conversion_memory_mib: int = 1024

  def __post_init__(self):
    one_of("data.tff_h5.task", self.task, ("next_word", "tag_prediction"))
    require(self.vocab_size >= 1, "data.tff_h5.vocab_size", ">= 1", self.vocab_size)
    require(self.tag_vocab_size >= 1, "data.tff_h5.tag_vocab_size", ">= 1", self.tag_vocab_size)
    require(
      self.conversion_memory_mib >= 1,
      "data.tff_h5.conversion_memory_mib",
      ">= 1",
      self.conversion_memory_mib,
    )


def tff_federation(
  folder, sequence_length: int = 80, coarse_labels: bool = False, options=TffOptions()
) -> FederatedData:
  """The TFF federation in ``folder`` (module docstring), converted once and memory-mapped."""
  import h5py

  folder = pathlib.Path(folder)
  train_file, test_file = _one(folder, "train"), _one(folder, "test")
  label_key = "coarse_label" if coarse_labels else "label"

  def convert_into(cache: pathlib.Path) -> dict:
    memory = (resident_mib(), options.conversion_memory_mib)
    with h5py.File(train_file, "r") as train_h5, h5py.File(test_file, "r") as test_h5:
      names = _examples(train_h5, train_file)
      test_names = set(_examples(test_h5, test_file))
      stackoverflow = "tokens" in train_h5["examples"][names[0]]
    vocabularies, meta = None, {}
    if stackoverflow:
      words = stackoverflow_vocabulary(folder, train_file, names, options.vocab_size)
      vocabularies, meta = ({w: i + 1 for i, w in enumerate(words)}, None), {"vocabulary": words}
      if options.task == "tag_prediction":
        tags = stackoverflow_tag_vocabulary(folder, train_file, names, options.tag_vocab_size)
        vocabularies = (vocabularies[0], {t: i for i, t in enumerate(tags)})
        meta.update(tags=tags, label_sets=True)
    convert = lambda group: _client(group, label_key, sequence_length, vocabularies)
    first = next(convert(group) for group in each_group(train_file, names[:1]))
    rows = ((first[0].shape[1:], first[0].dtype), (first[1].shape[1:], np.int32))
    splits = (
      ("train", train_file, names),
      ("test", test_file, [n if n in test_names else None for n in names]),
      ("pooled", test_file, sorted(test_names)),
    )
    for split, path, clients in splits:
      shape = (sequence_length, rows)
      _write_split(cache, split, path, clients, convert, shape, memory)
    for field in ("x", "y"):  # the pooled test clients are the global test set
      (cache / f"pooled_{field}.npy").replace(cache / f"global_{field}.npy")
    if vocabularies is not None and vocabularies[1] is not None:  # tags
      num_classes = len(vocabularies[1])
    elif vocabularies is not None:  # words, and the out-of-vocabulary, beginning and end ids
      num_classes = len(vocabularies[0]) + 4
    elif len(rows[0][0]) == 1:  # character windows
      num_classes = TFF_SHAKESPEARE_TOKENS
    elif rows[0][0] == (28, 28, 1):  # TFF's digits-only EMNIST: its file names say so
      num_classes = EMNIST_DIGITS if "digitsonly" in train_file.name else EMNIST_CLASSES
    else:
      num_classes = CIFAR100_COARSE if coarse_labels else CIFAR100_CLASSES
    meta.update(num_classes=num_classes, clients=names)
    return meta

  # "snippets": the Shakespeare tokenization; a cache made by an earlier one is remade
  shaping = {"sequence_length": sequence_length, "label": label_key, "snippets": "tff"}
  counts = [folder / name for name in (WORD_COUNTS, TAG_COUNTS) if (folder / name).is_file()]
  files = [train_file, test_file, *counts]
  # the bound on memory is no part of what the cache holds: a larger one goes on with it
  kept = {k: v for k, v in dataclasses.asdict(options).items() if k != "conversion_memory_mib"}
  return load_streamed(folder, files, convert_into, {**shaping, **kept})
