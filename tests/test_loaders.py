"""LEAF's JSON and TFF's HDF5 federations (issue 30): small files written here in exactly the
layouts LEAF and TFF document, loaded into the ragged store, and run end to end through the
CLI. The machines are offline: a user with the real files points ``data.source_dir`` at them."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from fedjax_lab import build_federation, load_config
from fedjax_lab.cli import main
from fedjax_lab.data.converted import CACHE
from fedjax_lab.data.sources import SHAKESPEARE_VOCAB, encode_text

WORDS = "to be or not to be that is the question whether tis nobler in the mind to suffer "


def _leaf_split(path, users: dict) -> None:
  """One LEAF JSON file: ``users``, ``num_samples``, ``user_data``."""
  path.parent.mkdir(parents=True, exist_ok=True)
  content = {
    "users": list(users),
    "num_samples": [len(xy[1]) for xy in users.values()],
    "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
  }
  path.write_text(json.dumps(content))


def _femnist_leaf(root, rng, sizes=(30, 5, 12)):
  """FEMNIST as LEAF writes it: 784 pixels a row, labels of 62 classes; users split over two
  train files; the last user has no test examples."""
  image = lambda n: rng.random((n, 784)).round(3).tolist()
  label = lambda n: rng.integers(0, 62, n).tolist()
  users = {f"f{k:04d}_{k:02d}": (image(n), label(n)) for k, n in enumerate(sizes)}
  names = list(users)
  _leaf_split(root / "train" / "all_data_0_train_9.json", {n: users[n] for n in names[:2]})
  _leaf_split(root / "train" / "all_data_1_train_9.json", {n: users[n] for n in names[2:]})
  _leaf_split(
    root / "test" / "all_data_0_test_9.json", {n: (image(3), label(3)) for n in names[:2]}
  )
  return users


def _shakespeare_leaf(root):
  """Shakespeare as LEAF writes it: 80 characters in ``x``, the next one in ``y``."""
  text = WORDS * 4
  roles = {
    "THE_TEMPEST_ARIEL": [(text[i : i + 80], text[i + 80]) for i in range(0, 60, 3)],
    "HAMLET_HAMLET": [(text[i : i + 80], text[i + 80]) for i in range(5, 50, 5)],
  }
  split = lambda part: {
    u: ([x for x, _ in v[part]], [y for _, y in v[part]]) for u, v in roles.items()
  }
  _leaf_split(root / "train" / "train.json", split(slice(0, -2)))
  _leaf_split(root / "test" / "test.json", split(slice(-2, None)))
  return roles


TWEETS = [
  ("i love this so much!", 1),
  ("worst day ever. i hate rain", 0),
  ("love the sun, love the beach", 1),
  ("can't sleep. so tired", 0),
  ("so happy today!", 1),
]


def _sent140_leaf(root):
  """Sent140 as LEAF writes it: ``x`` is [tweet id, date, query, user, text], ``y`` 0 or 1;
  user ``carol`` is only in the test files."""
  tweet = lambda i, text, user: [str(1467810369 + i), "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY",
                                 user, text]  # fmt: skip
  by_user = {"alice": TWEETS[:3], "bob": TWEETS[3:]}
  split = lambda part: {
    u: ([tweet(i, t, u) for i, (t, _) in enumerate(v[part])], [y for _, y in v[part]])
    for u, v in by_user.items()
  }
  _leaf_split(root / "train" / "all_data_niid_0_keep_0_train_9.json", split(slice(0, -1)))
  test = {**split(slice(-1, None)), "carol": ([tweet(9, "i love rain", "carol")], [1])}
  _leaf_split(root / "test" / "all_data_niid_0_keep_0_test_9.json", test)


def test_leaf_sent140_tweets_become_word_ids_over_the_training_vocabulary(tmp_path):
  from fedjax_lab.data.leaf import words

  _sent140_leaf(tmp_path)
  data = build_federation(_config(tmp_path, "leaf", 2, "data.leaf.words=6").data)
  assert data.num_classes == 2 and list(data.train_num_examples) == [2, 1]
  assert data.train.x.shape[1:] == (6,) and data.train.x.dtype == np.int32
  # The vocabulary: training tweets' words by frequency (ties by first appearance).
  trained = [t for t, _ in TWEETS[:2] + TWEETS[3:4]]
  counts = {}
  for text in trained:
    for word in words(text):
      counts[word] = counts.get(word, 0) + 1
  vocabulary = sorted(counts, key=lambda w: -counts[w])  # stable: first appearance
  ids = lambda text: [vocabulary.index(w) + 2 if w in vocabulary else 1 for w in words(text)]
  row = lambda text: (ids(text) + [0] * 6)[:6]
  assert words("can't sleep. so tired") == ["can't", "sleep", ".", "so", "tired"]
  np.testing.assert_array_equal(data.train_x[0, 0], row(TWEETS[0][0]))
  np.testing.assert_array_equal(data.train_y[0, :2], [1, 0])
  # "beach" and "sun" were never trained on: out of vocabulary (1), in the test split.
  np.testing.assert_array_equal(data.test_x[0, 0], row(TWEETS[2][0]))
  assert 1 in data.test_x[0, 0]
  assert len(data.global_test_y) == 3  # carol, test-only, is in the global test set


def test_leaf_sent140_reads_a_vocabulary_file(tmp_path):
  _sent140_leaf(tmp_path)
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("love\nrain\n")
  config = _config(tmp_path, "leaf", 2, f"data.leaf.vocab_file={vocab}", "data.leaf.words=4")
  data = build_federation(config.data)
  np.testing.assert_array_equal(data.train_x[0, 0], [1, 2, 1, 1])  # i love this so


def _reddit_comment(text: str, window: int = 10):
  """One comment as LEAF's Reddit preprocessing writes it: ``<BOS>`` + words + ``<EOS>`` cut
  into windows of ``window`` tokens padded with ``<PAD>``, and the same shifted by one token
  as ``target_tokens`` (with ``count_tokens``, the unpadded positions, and metadata)."""
  words = text.split()
  pad = lambda tokens: tokens + ["<PAD>"] * (-len(tokens) % window)
  cut = lambda tokens: [tokens[i : i + window] for i in range(0, len(tokens), window)]
  inputs = pad(["<BOS>", *words, "<EOS>"])
  targets = pad([*words, "<EOS>", "<PAD>"])
  counts = [[1.0 if i < len(words) + 2 else 0.0 for i in range(k, k + window)]
            for k in range(0, len(inputs), window)]  # fmt: skip
  record = {"target_tokens": cut(targets), "count_tokens": counts, "subreddit": "r/jax",
            "created_utc": 1512086400.0, "score": 3}  # fmt: skip
  return cut(inputs), record


def _reddit_leaf(root):
  """Reddit as LEAF writes it: users u1 and u2 in the train files, u1 in the test files."""
  comments = {
    "u1": ["jit the loop", "the loop is slow because of the python loop"],
    "u2": ["vmap the loop"],
  }
  split = lambda texts: tuple(map(list, zip(*[_reddit_comment(t) for t in texts])))
  train = {user: split(texts) for user, texts in comments.items()}
  _leaf_split(root / "train" / "reddit_0_train.json", train)
  _leaf_split(root / "test" / "reddit_0_test.json", {"u1": split(["jit vmap grad"])})


def test_leaf_reddit_windows_become_next_token_ids_over_the_training_vocabulary(tmp_path):
  _reddit_leaf(tmp_path)
  config = _config(tmp_path, "leaf", 2, "data.leaf.vocab_size=4")
  data = build_federation(config.data)
  # Training tokens by frequency: the and loop (4 each, "the" seen first), <BOS> and <EOS>
  # (3 each): ids 2-5; 0 is <PAD>, 1 any other token.
  assert data.num_classes == 4 + 2
  assert list(data.train_num_examples) == [3, 1]  # the 11-token comment makes two windows
  np.testing.assert_array_equal(data.train_x[0, 0], [4, 1, 2, 3, 5, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(data.train_y[0, 0], [1, 2, 3, 5, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(data.train_x[0, 2], [5, 0, 0, 0, 0, 0, 0, 0, 0, 0])  # <EOS>
  assert data.train_y[0, 1, -1] == 5  # after "... the python loop" comes <EOS>
  np.testing.assert_array_equal(data.test_x[0, 0], [4, 1, 1, 1, 5, 0, 0, 0, 0, 0])
  assert list(data.test_num_examples) == [1, 0]


def _celeba_leaf(root) -> dict:
  """CelebA as LEAF writes it (image names, 0/1 labels; users 9 and 14 train, 9 and 20 test)
  and its images in LEAF's ``raw/img_align_celeba``; returns each image's pixels."""
  from PIL import Image

  images = root / "raw" / "img_align_celeba"
  images.mkdir(parents=True)
  rng = np.random.default_rng(0)
  pixels = {}
  for k in range(5):
    pixels[k] = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)  # CelebA's aligned size
    Image.fromarray(pixels[k]).save(images / f"{k:06d}.png")
  name = lambda k: f"{k:06d}.png"
  _leaf_split(root / "train" / "celeba_train.json", {
    "9": ([name(0), name(1)], [1, 0]), "14": ([name(2)], [1]),
  })  # fmt: skip
  _leaf_split(root / "test" / "celeba_test.json", {"9": ([name(3)], [0]), "20": ([name(4)], [1])})
  return pixels


def test_leaf_celeba_reads_the_named_images_at_84_pixels(tmp_path):
  from PIL import Image

  pixels = _celeba_leaf(tmp_path)
  images = tmp_path / "raw" / "img_align_celeba"
  data = build_federation(_config(tmp_path, "leaf", 2).data)
  assert data.num_classes == 2 and data.train.x.shape[1:] == (84, 84, 3)
  assert list(data.train_num_examples) == [2, 1] and list(data.test_num_examples) == [1, 0]
  resized = Image.fromarray(pixels[1]).resize((84, 84)).convert("RGB")
  np.testing.assert_allclose(data.train_x[0, 1], np.asarray(resized) / 255.0, atol=1e-6)
  np.testing.assert_array_equal(data.train_y[0, :2], [1, 0])
  assert len(data.global_test_y) == 2  # user 20 is only in the test files
  elsewhere = tmp_path / "images"
  images.rename(elsewhere)
  moved = _config(tmp_path, "leaf", 2, f"data.leaf.image_dir={elsewhere}")
  np.testing.assert_array_equal(build_federation(moved.data).train_x[0, 1], data.train_x[0, 1])


def _config(folder, source: str, clients: int, *overrides: str):
  """The config of a ``source`` federation of ``clients`` clients read from ``folder``."""
  fields = [f"data.source={source}", f"data.source_dir={folder}", "data.partition=natural"]
  return load_config(None, [*fields, "cohort_size=1", f"data.num_clients={clients}", *overrides])


def test_leaf_femnist_becomes_one_client_per_user(tmp_path):
  users = _femnist_leaf(tmp_path, np.random.default_rng(0))
  config = _config(tmp_path, "leaf", 3)
  data = build_federation(config.data)
  np.testing.assert_array_equal(data.train_num_examples, [30, 5, 12])
  np.testing.assert_array_equal(data.test_num_examples, [3, 3, 0])
  assert data.num_classes == 62 and data.train.x.shape[1:] == (28, 28, 1)
  first = np.asarray(list(users.values())[1][0], np.float32).reshape(-1, 28, 28, 1)
  np.testing.assert_array_equal(data.train_x[1, :5], first)
  assert len(data.global_test_y) == 6
  data.validate()


def test_leaf_cache_is_made_once_and_remade_when_a_file_changes(tmp_path):
  _femnist_leaf(tmp_path, np.random.default_rng(0))
  config = _config(tmp_path, "leaf", 3)
  build_federation(config.data)
  stamp = (tmp_path / CACHE / "meta.json").stat().st_mtime_ns
  again = build_federation(config.data)
  assert (tmp_path / CACHE / "meta.json").stat().st_mtime_ns == stamp
  assert isinstance(again.train.x, np.memmap)
  _femnist_leaf(tmp_path, np.random.default_rng(1), sizes=(8, 9, 10))
  changed = build_federation(config.data)
  np.testing.assert_array_equal(changed.train_num_examples, [8, 9, 10])


def test_leaf_shakespeare_becomes_next_character_sequences(tmp_path):
  roles = _shakespeare_leaf(tmp_path)
  config = _config(tmp_path, "leaf", 2)
  data = build_federation(config.data)
  assert data.num_classes == len(SHAKESPEARE_VOCAB) and data.sequences
  x, y = roles["THE_TEMPEST_ARIEL"][0]
  ids = encode_text(x + y)
  np.testing.assert_array_equal(data.train_x[0, 0], ids[:-1])
  np.testing.assert_array_equal(data.train_y[0, 0], ids[1:])


def test_a_missing_leaf_folder_is_one_line(tmp_path):
  config = _config(tmp_path, "leaf", 2)
  with pytest.raises(FileNotFoundError, match="holds no LEAF JSON files in train/"):
    build_federation(config.data)


def _tff_file(path, clients: dict) -> None:
  """A TFF HDF5 federated split: ``examples/<client id>/<feature>``."""
  with h5py.File(path, "w") as h5:
    for name, features in clients.items():
      group = h5.create_group(f"examples/{name}")
      for feature, values in features.items():
        group.create_dataset(feature, data=values)


def _emnist_tff(root, rng):
  make = lambda n: {
    "pixels": rng.random((n, 28, 28), dtype=np.float32),
    "label": rng.integers(0, 62, n).astype(np.int32),
  }
  _tff_file(
    root / "fed_emnist_train.h5", {"f0001_45": make(20), "f0000_14": make(7), "f0002_33": make(11)}
  )
  _tff_file(root / "fed_emnist_test.h5", {"f0001_45": make(4), "f0000_14": make(2)})


def test_tff_emnist_clients_by_writer(tmp_path):
  _emnist_tff(tmp_path, np.random.default_rng(0))
  config = _config(tmp_path, "tff_h5", 3)
  data = build_federation(config.data)
  np.testing.assert_array_equal(data.train_num_examples, [7, 20, 11])  # sorted client ids
  np.testing.assert_array_equal(data.test_num_examples, [2, 4, 0])
  assert data.num_classes == 62 and data.train.x.shape[1:] == (28, 28, 1)
  with h5py.File(tmp_path / "fed_emnist_train.h5") as h5:
    np.testing.assert_array_equal(data.train_x[0, :7, ..., 0], h5["examples/f0000_14/pixels"][()])


def test_an_interrupted_tff_conversion_continues_where_it_stopped(tmp_path, monkeypatch):
  from fedjax_lab.data import ragged, tff

  _emnist_tff(tmp_path, np.random.default_rng(0))
  reference = tmp_path / "reference"
  reference.mkdir()
  for name in ("fed_emnist_train.h5", "fed_emnist_test.h5"):
    (reference / name).write_bytes((tmp_path / name).read_bytes())
  expected = build_federation(_config(reference, "tff_h5", 3).data)

  write = ragged.ClientArraysWriter.write

  def stop_at_the_second_training_client(self, client, x, y):
    if self.name == "train" and client == 1:
      raise KeyboardInterrupt
    write(self, client, x, y)

  monkeypatch.setattr(ragged.ClientArraysWriter, "write", stop_at_the_second_training_client)
  with pytest.raises(KeyboardInterrupt):
    build_federation(_config(tmp_path, "tff_h5", 3).data)
  progress = json.loads((tmp_path / CACHE / "train_written.json").read_text())
  assert progress["done"] == 1 and not (tmp_path / CACHE / "meta.json").exists()
  monkeypatch.setattr(ragged.ClientArraysWriter, "write", write)
  read, client = [], tff._client

  def reading(group, *args):
    if group.file.filename.endswith("train.h5"):
      read.append(group.name.rsplit("/", 1)[-1])
    return client(group, *args)

  monkeypatch.setattr(tff, "_client", reading)
  data = build_federation(_config(tmp_path, "tff_h5", 3).data)
  # Training client 0 is read once, for the rows' shapes, and not written again.
  assert sorted(read) == ["f0000_14", "f0001_45", "f0002_33"]
  for field in ("train_x", "train_y", "test_x", "global_test_x", "global_test_y"):
    np.testing.assert_array_equal(getattr(data, field), getattr(expected, field))


def test_a_tff_conversion_past_its_memory_bound_stops_in_one_line_and_goes_on(
  tmp_path, monkeypatch
):
  from fedjax_lab.data import tff

  _emnist_tff(tmp_path, np.random.default_rng(0))
  assert 0 < tff.resident_mib() < 1e6
  readings = iter([300.0, 1400.0])  # at the start, then as if the first client took 1.1 GiB
  monkeypatch.setattr(tff, "resident_mib", lambda: next(readings, 1400.0))
  with pytest.raises(ValueError, match=r"^data.tff_h5.conversion_memory_mib=1024: converting "
                     r"train client 0 of fed_emnist_train.h5 took this process from 300 to "
                     r"1400 MiB; the 1 clients converted are kept"):  # fmt: skip
    build_federation(_config(tmp_path, "tff_h5", 3).data)
  progress = json.loads((tmp_path / CACHE / "train_written.json").read_text())
  assert progress["done"] == 1
  config = _config(tmp_path, "tff_h5", 3, "data.tff_h5.conversion_memory_mib=2048")
  data = build_federation(config.data)  # the larger bound goes on from the client written
  np.testing.assert_array_equal(data.train_num_examples, [7, 20, 11])


def test_tff_emnist_digits_only_has_ten_classes(tmp_path):
  rng = np.random.default_rng(0)
  make = lambda n: {
    "pixels": rng.random((n, 28, 28), dtype=np.float32),
    "label": rng.integers(0, 10, n).astype(np.int32),
  }
  _tff_file(tmp_path / "fed_emnist_digitsonly_train.h5", {"f0": make(5), "f1": make(3)})
  _tff_file(tmp_path / "fed_emnist_digitsonly_test.h5", {"f0": make(2)})
  data = build_federation(_config(tmp_path, "tff_h5", 2).data)
  assert data.num_classes == 10 and list(data.train_num_examples) == [5, 3]


def test_tff_cifar100_tests_on_clients_of_its_own(tmp_path):
  rng = np.random.default_rng(0)
  make = lambda n: {
    "image": rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8),
    "label": rng.integers(0, 100, n).astype(np.int64),
    "coarse_label": rng.integers(0, 20, n).astype(np.int64),
  }
  _tff_file(tmp_path / "fed_cifar100_train.h5", {"0": make(6), "1": make(4)})
  _tff_file(tmp_path / "fed_cifar100_test.h5", {"7": make(5)})
  data = build_federation(_config(tmp_path, "tff_h5", 2).data)
  assert data.num_classes == 100 and data.test.total == 0 and len(data.global_test_y) == 5
  assert 0 <= data.train.x.min() and data.train.x.max() <= 1
  coarse = build_federation(_config(tmp_path, "tff_h5", 2, "data.coarse_labels=true").data)
  assert coarse.num_classes == 20 and coarse.train.y.max() < 20


def test_tff_shakespeare_is_tokenized_and_padded_as_tff_does(tmp_path):
  from fedjax_lab.data.tff import TFF_BOS, TFF_CHARS, TFF_EOS, TFF_OOV, TFF_SHAKESPEARE_TOKENS

  snippets = lambda *texts: {"snippets": np.array([t.encode() for t in texts], dtype=object)}
  long, short = WORDS * 2, "To be, or not"  # a tail past whole windows; under one window
  _tff_file(
    tmp_path / "shakespeare_train.h5", {"ARIEL": snippets(long, "é"), "HAMLET": snippets(short)}
  )
  _tff_file(tmp_path / "shakespeare_test.h5", {"ARIEL": snippets(WORDS), "HAMLET": snippets(WORDS)})
  config = _config(tmp_path, "tff_h5", 2, "data.sequence_length=20")
  data = build_federation(config.data)
  assert data.num_classes == TFF_SHAKESPEARE_TOKENS == 90
  token = lambda c: TFF_CHARS.index(c) + 1
  # Every character is kept: ceil((len + 2) / 21) windows a snippet, the last padded with 0.
  assert data.train_num_examples[0] == -(-(len(long) + 2) // 21) + 1
  assert data.train_num_examples[1] == 1
  hamlet = np.concatenate([data.train_x[1, 0], data.train_y[1, 0, -1:]])
  expected = [TFF_BOS, *map(token, short), TFF_EOS] + [0] * (21 - len(short) - 2)
  np.testing.assert_array_equal(hamlet, expected)
  np.testing.assert_array_equal(data.train_y[1, 0], expected[1:])
  # "é" is two UTF-8 bytes outside the vocabulary: two out-of-vocabulary tokens.
  last = data.train_num_examples[0] - 1
  np.testing.assert_array_equal(data.train_x[0, last, :4], [TFF_BOS, TFF_OOV, TFF_OOV, TFF_EOS])
  first = data.train_x[0, 0]
  assert first[0] == TFF_BOS and list(first[1:6]) == [token(c) for c in long[:5]]


@pytest.mark.slow  # a whole run each (make test-fast skips it)
@pytest.mark.parametrize("dataset, model", [("reddit", "byte_lm"), ("celeba", "mlp")])
def test_leaf_reddit_and_celeba_train_through_the_cli(tmp_path, dataset, model, capsys):
  files = tmp_path / "files"
  files.mkdir()
  (_reddit_leaf if dataset == "reddit" else _celeba_leaf)(files)
  code = main([
    "data.source=leaf", f"data.source_dir={files}", "data.partition=natural",
    "data.num_clients=2", f"model.name={model}", "cohort_size=2", "rounds=2", "eval_every=2",
    "local.batch_size=2", "checkpoint_every=0", f"out_dir={tmp_path / 'run'}", "--no-progress",
  ])  # fmt: skip
  assert code == 0, capsys.readouterr().err
  rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["round"] == 2 and 0 <= rows[-1]["global_accuracy"] <= 1


@pytest.mark.slow  # a whole run (make test-fast skips it)
@pytest.mark.parametrize("source", ["leaf", "tff_h5"])
def test_each_loader_runs_end_to_end_through_the_cli(tmp_path, source, capsys):
  files = tmp_path / "files"
  files.mkdir()
  if source == "leaf":
    _femnist_leaf(files, np.random.default_rng(0))
  else:
    _emnist_tff(files, np.random.default_rng(0))
  code = main(
    [
      f"data.source={source}",
      f"data.source_dir={files}",
      "data.partition=natural",
      "data.num_clients=3",
      "cohort_size=2",
      "rounds=2",
      "eval_every=2",
      "local.batch_size=4",
      "checkpoint_every=0",
      f"out_dir={tmp_path / 'run'}",
    ]
  )
  assert code == 0
  rows = [
    json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  ]
  assert rows[-1]["round"] == 2 and 0 <= rows[-1]["global_accuracy"] <= 1


def _stackoverflow_tff(root, counts: bool):
  """StackOverflow as TFF ships it: ``examples/<client>/{tokens, title, tags, score,
  creation_date, type}``, ``tokens`` a sentence of space-separated words; TFF's word counts
  beside the files when ``counts``."""
  post = lambda *sentences: {
    "tokens": np.array([t.encode() for t in sentences], dtype=object),
    "title": np.array([b"a title"] * len(sentences), dtype=object),
    "tags": np.array([b"python|jax"] * len(sentences), dtype=object),
    "score": np.zeros(len(sentences), np.int64),
    "creation_date": np.array([b"2010-01-01"] * len(sentences), dtype=object),
    "type": np.array([b"question"] * len(sentences), dtype=object),
  }
  _tff_file(root / "stackoverflow_train.h5", {
    "00000001": post("how do i jit a loop ?", "jit the loop"),
    "00000002": post("why is my loop slow when i jit it and vmap it over many clients"),
  })  # fmt: skip
  _tff_file(root / "stackoverflow_test.h5", {"00000001": post("a loop in jax")})
  if counts:
    (root / "stackoverflow.word_count").write_text("the 900\nloop 800\njit 700\ni 600\n")


def test_tff_stackoverflow_sentences_become_next_word_windows_as_tff_makes_them(tmp_path):
  from fedjax_lab.data.tff import stackoverflow_window

  _stackoverflow_tff(tmp_path, counts=True)
  config = _config(tmp_path, "tff_h5", 2, "data.sequence_length=6", "data.tff_h5.vocab_size=3")
  data = build_federation(config.data)
  # TFF's ids: word i of the count file is i + 1 (the, loop, jit), 0 pads, then oov 4, bos 5,
  # eos 6; one window a sentence, cut at 6 words, eos only after a shorter sentence.
  assert data.num_classes == 3 + 4 and list(data.train_num_examples) == [2, 1]
  window = lambda x, y: list(x) + [int(y[-1])]
  assert window(data.train_x[0, 0], data.train_y[0, 0]) == [5, 4, 4, 4, 3, 4, 2]
  assert window(data.train_x[0, 1], data.train_y[0, 1]) == [5, 3, 1, 2, 6, 0, 0]
  assert window(data.train_x[1, 0], data.train_y[1, 0]) == [5, 4, 4, 4, 2, 4, 4]  # no eos
  np.testing.assert_array_equal(data.train_y[0, 1], [3, 1, 2, 6, 0, 0])
  ids = {"the": 1, "loop": 2, "jit": 3}
  assert list(stackoverflow_window("jit the loop", ids, 6)) == [5, 3, 1, 2, 6, 0, 0]


def test_tff_stackoverflow_vocabulary_from_the_training_clients_without_a_count_file(tmp_path):
  _stackoverflow_tff(tmp_path, counts=False)
  config = _config(tmp_path, "tff_h5", 2, "data.sequence_length=4", "data.tff_h5.vocab_size=2")
  data = build_federation(config.data)
  # The most frequent training words: "jit" and "loop" (3 each; "jit" is seen first), so
  # jit 1, loop 2, then oov 3, bos 4, eos 5.
  assert data.num_classes == 2 + 4
  assert list(data.train_x[0, 1]) == [4, 1, 3, 2]  # bos, jit, oov (the), loop


def test_tff_stackoverflow_tag_prediction_reads_words_and_tag_sets(tmp_path):
  _stackoverflow_tff(tmp_path, counts=True)
  (tmp_path / "stackoverflow.tag_count").write_text('{"jax": 50, "numpy": 40, "python": 30}')
  config = _config(
    tmp_path, "tff_h5", 2, "data.sequence_length=6", "data.tff_h5.task=tag_prediction",
    "data.tff_h5.vocab_size=3", "data.tff_h5.tag_vocab_size=2",
  )  # fmt: skip
  data = build_federation(config.data)
  # Words: the count file's the, loop, jit as 2, 3, 4 (0 pads, 1 out of vocabulary); the body
  # then the title ("a title"), cut at 6 words. Tags: jax 0, numpy 1; "python" is not kept.
  assert data.num_classes == 2 and data.train.y.shape[1:] == (5,)
  np.testing.assert_array_equal(data.train_x[0, 0], [1, 1, 1, 4, 1, 3])  # how do i jit a loop
  np.testing.assert_array_equal(data.train_x[0, 1], [4, 2, 3, 1, 1, 0])  # jit the loop a title
  np.testing.assert_array_equal(data.train_y[0, 0], [0, -1, -1, -1, -1])  # python|jax -> {jax}
  assert list(data.train_num_examples) == [2, 1] and list(data.test_num_examples) == [1, 0]


def test_tff_stackoverflow_tag_vocabulary_from_the_training_clients(tmp_path):
  from fedjax_lab.data.tff import stackoverflow_tags

  _stackoverflow_tff(tmp_path, counts=False)
  config = _config(tmp_path, "tff_h5", 2, "data.tff_h5.task=tag_prediction")
  data = build_federation(config.data)
  assert data.num_classes == 2  # python and jax, 3 posts each; python is seen first
  np.testing.assert_array_equal(data.train_y[1, 0], [0, 1, -1, -1, -1])
  words, tags = stackoverflow_tags("jit it", "b|a|zz", {"jit": 1}, {"a": 0, "b": 1}, 3)
  assert list(words) == [2, 1, 0] and list(tags) == [1, 0, -1, -1, -1]


def test_max_client_examples_keeps_a_given_federations_first_training_examples(tmp_path):
  _stackoverflow_tff(tmp_path, counts=True)
  full = build_federation(_config(tmp_path, "tff_h5", 2).data)
  config = _config(tmp_path, "tff_h5", 2, "data.max_client_examples=1")
  capped = build_federation(config.data)
  assert list(capped.train_num_examples) == [1, 1] and capped.train_x.shape[1] == 1
  np.testing.assert_array_equal(capped.train_x[:, 0], full.train_x[:, 0])
  np.testing.assert_array_equal(capped.train_y[:, 0], full.train_y[:, 0])
  x, _ = capped.train.gather(np.asarray([0]))
  assert len(x) == 1  # only the kept rows are read
  assert list(capped.test_num_examples) == list(full.test_num_examples)


@pytest.mark.parametrize("task", ["tag_prediction", "next_word"])
def test_methods_that_label_their_own_samples_are_refused_on_tags_and_tokens(tmp_path, task):
  from fedjax_lab.algorithms import ALGORITHMS
  from fedjax_lab.build import build_experiment

  _stackoverflow_tff(tmp_path, counts=True)
  fields = [f"data.tff_h5.task={task}", "data.sequence_length=6"]
  holds = "label sets" if task == "tag_prediction" else "a label per token"
  labelling = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).single_labels]
  assert {"fedgen", "fedsnd"} <= set(labelling)
  for name in labelling:
    config = _config(tmp_path, "tff_h5", 2, *fields, f"algorithm.name={name}", "cohort_size=2")
    with pytest.raises(ValueError, match=f"^algorithm.name must be one of fedavg, .*, whose "
                       f"examples hold {holds}; got '{name}', which labels samples"):  # fmt: skip
      build_experiment(config)
  flip = ["attack.kind=label_flip", "attack.fraction=0.5"]
  with pytest.raises(ValueError, match=f"^attack.kind must not be label_flip .* hold {holds}"):
    build_experiment(_config(tmp_path, "tff_h5", 2, *fields, *flip))


@pytest.mark.slow  # a whole run (make test-fast skips it)
def test_stackoverflow_tag_prediction_trains_logistic_regression_through_the_cli(tmp_path):
  files = tmp_path / "files"
  files.mkdir()
  _stackoverflow_tff(files, counts=True)
  code = main([
    "data.source=tff_h5", f"data.source_dir={files}", "data.partition=natural",
    "data.num_clients=2", "data.tff_h5.task=tag_prediction", "data.sequence_length=8",
    "model.name=bag_of_words", "model.bag_of_words.pooling=mean", "cohort_size=2",
    "rounds=2", "eval_every=2", "local.batch_size=2", "checkpoint_every=0",
    f"out_dir={tmp_path / 'run'}",
  ])  # fmt: skip
  assert code == 0
  rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["round"] == 2 and rows[-1]["global_accuracy"] == 1.0  # recall@5 of 2 tags


@pytest.mark.slow  # a whole run (make test-fast skips it)
def test_sent140_trains_a_bag_of_words_through_the_cli(tmp_path):
  files = tmp_path / "files"
  _sent140_leaf(files)
  overrides = ["data.source=leaf", f"data.source_dir={files}", "data.partition=natural",
               "data.num_clients=2", "model.name=bag_of_words", "cohort_size=2", "rounds=2",
               "eval_every=2", "local.batch_size=2", "checkpoint_every=0",
               f"out_dir={tmp_path / 'run'}"]  # fmt: skip
  assert main(overrides) == 0
  rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["round"] == 2 and 0 <= rows[-1]["global_accuracy"] <= 1


# --- Round 4 (issue 46, findings 9 and 10): nothing dropped silently, malformed files in one line


def test_leaf_test_users_absent_from_training_are_in_the_global_test_set(tmp_path):
  rng = np.random.default_rng(0)
  users = _femnist_leaf(tmp_path, rng)
  names = list(users)
  _leaf_split(
    tmp_path / "test" / "all_data_1_test_9.json", {"stranger": ([[0.5] * 784] * 4, [7] * 4)}
  )
  data = build_federation(_config(tmp_path, "leaf", 3).data)
  assert len(data.global_test_y) == 6 + 4 and list(data.global_test_y[-4:]) == [7] * 4
  np.testing.assert_array_equal(data.test_num_examples, [3, 3, 0])  # clients: training users
  assert data.num_clients == len(names)


@pytest.mark.slow  # a whole run (make test-fast skips it)
def test_leaf_user_split_with_no_shared_user_loads_and_runs(tmp_path, capsys):
  # LEAF's "-t user" split: the test users are other users; every client's own test is empty.
  rng = np.random.default_rng(1)
  image = lambda n: rng.random((n, 784)).round(3).tolist()
  label = lambda n: rng.integers(0, 62, n).tolist()
  _leaf_split(
    tmp_path / "train" / "t.json", {"a": (image(12), label(12)), "b": (image(9), label(9))}
  )
  _leaf_split(tmp_path / "test" / "t.json", {"c": (image(5), label(5))})
  data = build_federation(_config(tmp_path, "leaf", 2).data)
  assert len(data.global_test_y) == 5 and data.test_num_examples.sum() == 0
  fields = [f"data.source_dir={tmp_path}", "data.source=leaf", "data.partition=natural",
            "data.num_clients=2", "cohort_size=2", "rounds=1", "model.name=mlp",
            f"out_dir={tmp_path / 'run'}", "--no-progress"]  # fmt: skip
  assert main(fields) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
  "train, message",
  [
    ({"users": [], "num_samples": [], "user_data": {}}, "the LEAF files list no users"),
    ({"users": ["u"], "num_samples": [1], "user_data": {}},
     "user 'u' has no user_data entry with lists x and y"),
    ({"users": "u", "num_samples": [1], "user_data": {"u": {"x": [[1.0]], "y": [0]}}},
     "'users' must be a list of user names"),
    ({"users": ["u"], "num_samples": [2], "user_data": {"u": {"x": [[1.0], [2.0]], "y": [7.6, 1]}}},
     "train user 'u': label 7.6 is not a class id"),
    ({"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": [[1.0]], "y": ["7"]}}},
     "train user 'u': label '7' is not a class id"),
    ({"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": [[1.0]], "y": [0, 1]}}},
     "user 'u' has 1 x and 2 y"),
    ({"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": [["a", "b", "c"]], "y": [0]}}},
     "x holds lists of strings, not read; read: FEMNIST, Shakespeare, Synthetic, Sent140, "
     "Reddit and CelebA"),
    ({"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": [[
      "1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "someone", "a tweet"
    ]], "y": [4]}}},
     "train user 'u': Sent140's labels are 0 or 1, got 4"),
    ({"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": ["000001.jpg"], "y": [0]}}},
     "raw/img_align_celeba' is not there: point data.leaf.image_dir at CelebA's"),
    ({"users": ["u"], "num_samples": [1],
      "user_data": {"u": {"x": [[["a", "b"], ["c", "d"]]], "y": [0]}}},
     "train user 'u': every Reddit y must be a record with its target_tokens"),
    ({"users": ["u"], "num_samples": [1], "user_data": {"u": {
      "x": [[["a", "b"], ["c", "d"]]], "y": [{"target_tokens": [["b", "c"]]}]}}},
     "train user 'u': a comment has 2 windows, its targets 1"),
  ],
)  # fmt: skip
def test_malformed_leaf_files_are_one_line_naming_the_file_or_user(
  tmp_path, capsys, train, message
):
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "t.json").write_text(json.dumps(train))
  _leaf_split(tmp_path / "test" / "t.json", {"u": ([[1.0]], [0])})
  args = [f"data.source_dir={tmp_path}", "data.source=leaf", "data.partition=natural",
          "data.num_clients=1", "cohort_size=1", f"out_dir={tmp_path / 'run'}"]  # fmt: skip
  assert main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith("fedjax-lab: ValueError: ") and message in err and err.count("\n") == 1


def _write_h5(path, build) -> None:
  with h5py.File(path, "w") as h5:
    build(h5)


@pytest.mark.parametrize(
  "build, message",
  [
    (lambda h5: h5.create_group("other"), "no 'examples' group (TFF's layout"),
    (lambda h5: h5.create_group("examples"), "'examples' holds no client"),
    (lambda h5: h5.create_dataset("examples/c0/pixels", data=np.zeros((2, 28, 28))),
     "client 'c0' has no 'label' (found pixels)"),
    (lambda h5: h5.create_dataset("examples/c0/title", data=np.array([b"a b"])),
     "client 'c0' holds title; read: pixels (EMNIST), image (CIFAR-100), snippets (Shakespeare) "
     "or tokens (StackOverflow)"),
  ],
)  # fmt: skip
def test_malformed_tff_files_are_one_line_naming_the_file_and_client(
  tmp_path, capsys, build, message
):
  _write_h5(tmp_path / "fed_x_train.h5", build)
  _tff_file(tmp_path / "fed_x_test.h5", {"c0": {"pixels": np.zeros((1, 28, 28)), "label": [0]}})
  args = [f"data.source_dir={tmp_path}", "data.source=tff_h5", "data.partition=natural",
          "data.num_clients=1", "cohort_size=1", f"out_dir={tmp_path / 'run'}"]  # fmt: skip
  assert main(args) == 2
  err = capsys.readouterr().err
  assert "fed_x_train.h5" in err and message in err and err.count("\n") == 1
