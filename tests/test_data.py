import gzip
import struct

import numpy as np
import pytest

from fedjax_lab.data import sources


def test_padding_cohort_and_counts(small_federation):
  data = small_federation
  assert data.train_x.shape[:2] == (8, data.train_num_examples.max())
  for k in range(data.num_clients):
    n = data.train_num_examples[k]
    assert not data.train_x[k, n:].any(), "padding must be zeros"
  cohort = data.cohort([5, 2])
  np.testing.assert_array_equal(cohort.num_examples, data.train_num_examples[[5, 2]])
  np.testing.assert_array_equal(cohort.x[0], data.train_x[5])
  with pytest.raises(ValueError, match="client ids"):
    data.cohort([8])


def test_client_train_and_test_examples_are_disjoint(small_federation):
  data = small_federation
  for k in range(data.num_clients):
    train = {r.tobytes() for r in data.train_x[k, : data.train_num_examples[k]]}
    test = {r.tobytes() for r in data.test_x[k, : data.test_num_examples[k]]}
    # digits has a few duplicate images; a client's own split must not share one index,
    # so at most a handful of identical pictures may coincide.
    assert len(train & test) <= 2


def test_pooled_holds_every_training_example(small_federation):
  pooled = small_federation.pooled()
  assert pooled.num_clients == 1
  assert pooled.train_num_examples[0] == small_federation.train_num_examples.sum()
  np.testing.assert_array_equal(
    np.bincount(pooled.train_y[0], minlength=10), small_federation.label_histogram().sum(0)
  )


def test_summary_and_label_plot(small_federation, tmp_path):
  stats = small_federation.summary()
  assert stats["num_clients"] == 8
  assert stats["total_train"] == int(small_federation.train_num_examples.sum())
  assert 0 < stats["mean_label_entropy_nats"] < np.log(10)
  small_federation.plot_label_distribution(tmp_path / "labels.png")
  assert (tmp_path / "labels.png").stat().st_size > 1000


def _write_idx(path, array):
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
    struct.pack(">I", d) for d in array.shape
  )
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reads_local_files(tmp_path):
  rng = np.random.default_rng(0)
  images, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
  for split in ("train", "t10k"):
    _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
  data = sources.fashion_mnist_idx(str(tmp_path))
  assert data.train_x.shape == (7, 28, 28, 1)
  np.testing.assert_allclose(data.train_x[..., 0], images / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(data.test_y, labels)


def test_fashion_mnist_idx_missing_files_say_how_to_get_them(tmp_path):
  with pytest.raises(FileNotFoundError, match="make data"):
    sources.fashion_mnist_idx(str(tmp_path))


PLAY = """THE TRAGEDY OF TESTING

ACT I.

Ham.
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer

Hor.
My lord, I came to see your father's funeral.

Ham.
I pray thee, do not mock me, fellow-student.
"""


def test_shakespeare_groups_by_play_and_speaker(tmp_path):
  assert sources.parse_play(PLAY)[0] == (
    "Ham",
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer",
  )
  (tmp_path / "hamlet_gut.txt").write_text(PLAY)
  (tmp_path / "hamlet_gut_f.txt").write_text(PLAY)  # first-folio duplicate: skipped
  data = sources.shakespeare(str(tmp_path), sequence_length=10, min_chars=20)
  assert data.group_names == ("hamlet/Ham", "hamlet/Hor")
  assert data.train_x.shape[1] == 10
  np.testing.assert_array_equal(data.train_x[:, 1:], data.train_y[:, :-1])
  decoded = "".join(sources.SHAKESPEARE_VOCAB[i] for i in data.train_x[0])
  assert decoded.isprintable()


def test_synthetic_is_heterogeneous_and_seeded():
  a = sources.synthetic(1.0, 1.0, num_clients=5, seed=3)
  b = sources.synthetic(1.0, 1.0, num_clients=5, seed=3)
  np.testing.assert_array_equal(a.train_x, b.train_x)
  assert a.train_x.shape[1] == 60 and set(np.unique(a.train_groups)) == set(range(5))
  means = [a.train_x[a.train_groups == k].mean() for k in range(5)]
  assert np.std(means) > 0.1, "client input distributions should differ"


def test_tfds_loader_with_mock_data():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    data = sources.tfds_source("cifar100", coarse_labels=True)
  assert data.train_x.shape == (12, 32, 32, 3) and data.num_classes == 20
  assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0
  assert data.train_y.max() < 20
  with pytest.raises(ValueError, match="not supported"):
    sources.tfds_source("imagenet2012")


def test_shakespeare_genre_windows_are_standardized_features(tmp_path):
  (tmp_path / "hamlet_gut.txt").write_text(PLAY * 20)
  (tmp_path / "henry_v_gut.txt").write_text(PLAY.replace("question", "king") * 20)
  (tmp_path / "sonnets_gut.txt").write_text(PLAY)  # no genre: skipped
  data = sources.shakespeare_genre(str(tmp_path), window=50, hash_buckets=16)
  assert data.group_names == ("hamlet", "henry_v") and data.num_classes == 3
  assert data.train_x.shape[1] == len(sources.SHAKESPEARE_VOCAB) + 16
  assert set(np.unique(data.train_y)) == {1, 2}  # history, tragedy
  np.testing.assert_allclose(data.train_x.mean(0), 0.0, atol=1e-4)
