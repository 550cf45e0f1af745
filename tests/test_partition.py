import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_lab.data import partition


def _assert_disjoint(clients, total=None):
  flat = np.concatenate(clients)
  assert len(flat) == len(np.unique(flat)), "a sample is given to two clients"
  if total is not None:
    np.testing.assert_array_equal(np.sort(flat), np.arange(total))


@given(num_examples=st.integers(10, 400), num_clients=st.integers(1, 10), seed=st.integers(0, 99))
@settings(max_examples=30, deadline=None)
def test_iid_covers_every_example_once_and_is_balanced(num_examples, num_clients, seed):
  clients = partition.iid(num_examples, num_clients, seed)
  _assert_disjoint(clients, num_examples)
  sizes = [len(c) for c in clients]
  assert max(sizes) - min(sizes) <= 1


@given(alpha=st.sampled_from([0.1, 0.5, 1.0, 100.0]), seed=st.integers(0, 50))
@settings(max_examples=20, deadline=None)
def test_dirichlet_is_a_partition_with_min_size(alpha, seed):
  labels = np.random.default_rng(seed).integers(0, 10, 1000)
  clients = partition.dirichlet(labels, 10, alpha, seed, min_examples=5)
  _assert_disjoint(clients, 1000)
  assert min(len(c) for c in clients) >= 5


def test_dirichlet_skew_grows_as_alpha_shrinks():
  labels = np.repeat(np.arange(10), 200)

  def mean_classes_held(alpha):
    clients = partition.dirichlet(labels, 20, alpha, seed=0, min_examples=2)
    return np.mean([np.sum(np.bincount(labels[c], minlength=10) > 0.05 * len(c)) for c in clients])

  assert mean_classes_held(0.1) < mean_classes_held(1.0) < mean_classes_held(100.0)


def test_dirichlet_is_deterministic_given_seed():
  labels = np.repeat(np.arange(5), 50)
  a = partition.dirichlet(labels, 5, 0.3, seed=7, min_examples=1)
  b = partition.dirichlet(labels, 5, 0.3, seed=7, min_examples=1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_dirichlet_gives_up_with_a_clear_error():
  labels = np.repeat(np.arange(10), 30)
  with pytest.raises(ValueError, match="min_examples=25.*3 draws"):
    partition.dirichlet(labels, 10, 0.01, seed=0, min_examples=25, max_retries=3)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_dirichlet_rejects_non_positive_alpha(alpha):
  with pytest.raises(ValueError, match="data.dirichlet.alpha must be > 0"):
    partition.dirichlet(np.zeros(100, int), 2, alpha, 0)


def test_more_clients_than_examples_is_an_error():
  with pytest.raises(ValueError, match="data.num_clients=11 exceeds the 10 examples"):
    partition.iid(10, 11, 0)


def test_capped_dirichlet_balances_sizes():
  labels = np.repeat(np.arange(10), 500)
  plain = partition.dirichlet(labels, 20, 0.1, seed=3, min_examples=1)
  capped = partition.dirichlet(labels, 20, 0.1, seed=3, min_examples=1, balance_cap=True)
  _assert_disjoint(capped, len(labels))
  assert np.std([len(c) for c in capped]) < np.std([len(c) for c in plain])


def test_shards_give_each_client_k_classes():
  labels = np.repeat(np.arange(10), 100)
  clients = partition.shards(labels, 10, classes_per_client=2, seed=0)
  _assert_disjoint(clients)
  assert all(len(np.unique(labels[c])) <= 2 for c in clients)
  assert all(len(c) == 100 for c in clients)


def test_quantity_skew_keeps_labels_iid_and_sizes_uneven():
  clients = partition.quantity_skew(5000, 20, sigma=1.5, seed=0, min_examples=10)
  _assert_disjoint(clients, 5000)
  sizes = np.array([len(c) for c in clients])
  assert sizes.min() >= 10 and sizes.max() > 3 * np.median(sizes)


def test_natural_groups_by_id():
  groups = np.array([3, 1, 3, 2, 1, 3])
  clients = partition.natural(groups)
  assert [c.tolist() for c in clients] == [[1, 4], [3], [0, 2, 5]]


def test_train_test_split_is_disjoint_and_keeps_both_sides():
  clients = partition.iid(103, 7, 0)
  train, test = partition.train_test_split(clients, 0.25, seed=1)
  for full, tr, te in zip(clients, train, test):
    assert not np.intersect1d(tr, te).size
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), full)
    assert len(te) >= 1 and len(tr) >= 1
  with pytest.raises(ValueError, match="data.test_fraction"):
    partition.train_test_split(clients, 1.0, 0)


@given(
  num_examples=st.integers(1, 300),
  num_classes=st.integers(1, 10),
  num_clients=st.integers(1, 40),
  alpha=st.floats(1e-3, 1e3),
  sigma=st.floats(0, 60),
  classes_per_client=st.integers(1, 5),
  min_examples=st.integers(1, 20),
  seed=st.integers(0, 2**31),
  name=st.sampled_from(["iid", "dirichlet", "dirichlet_capped", "shards", "quantity_skew"]),
)
@settings(max_examples=150, deadline=None)
def test_every_partitioner_splits_or_says_which_field_is_wrong(
  num_examples,
  num_classes,
  num_clients,
  alpha,
  sigma,
  classes_per_client,
  min_examples,
  seed,
  name,
):
  """Through the registry, with the run's config: a partition (disjoint, within range,
  complete up to the shards' remainder, the same for the same seed, no empty client, the
  Dirichlet minimum met) or a ValueError naming a ``data.`` field."""
  from fedjax_lab.config import DataConfig
  from fedjax_lab.data.catalog import PARTITIONERS
  from fedjax_lab.data.sources import Dataset

  labels = np.random.default_rng(seed).integers(0, num_classes, num_examples).astype(np.int32)
  dataset = Dataset(np.zeros((num_examples, 1), np.float32), labels, labels[:0], labels[:0], 10)
  entry = PARTITIONERS.get(name)
  values = dict(
    alpha=alpha, sigma=sigma, classes_per_client=classes_per_client, min_examples=min_examples
  )
  own = {f.name for f in dataclasses.fields(entry.options)}
  try:
    options = entry.options(**{k: v for k, v in values.items() if k in own})
    data = DataConfig(partition=name, num_clients=num_clients, seed=seed, partition_options=options)
    clients = entry.build(dataset, data, options)
  except ValueError as error:
    assert "data." in str(error)
    return
  assert len(clients) == num_clients
  flat = np.concatenate(clients)
  assert len(flat) == len(np.unique(flat)) and (flat >= 0).all() and (flat < num_examples).all()
  dropped = num_examples % (num_clients * classes_per_client) if name == "shards" else 0
  assert len(flat) == num_examples - dropped
  assert min(len(c) for c in clients) >= (min_examples if "dirichlet" in name else 1)
  again = entry.build(dataset, data, options)
  assert all(np.array_equal(a, b) for a, b in zip(clients, again))
