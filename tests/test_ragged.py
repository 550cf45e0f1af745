"""The ragged client store (``data/ragged.py``) and the cohort it gathers: host memory follows
the real examples, a cohort moves only its own rows, and what reaches the methods is exactly
the padded layout they always read."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_lab.data import FederatedData
from fedjax_lab.data.federated import unpack
from fedjax_lab.data.ragged import ClientArrays, bucket, drop_pages


def _store(counts, features=3, seed=0) -> ClientArrays:
  rng = np.random.default_rng(seed)
  total = int(np.sum(counts))
  x = rng.normal(size=(total, features)).astype(np.float32)
  y = rng.integers(0, 5, total).astype(np.int32)
  return ClientArrays(x, y, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def _padded_by_hand(store: ClientArrays, ids, width):
  x = np.zeros((len(ids), width) + store.x.shape[1:], store.x.dtype)
  y = np.zeros((len(ids), width), store.y.dtype)
  for slot, client in enumerate(ids):
    start, stop = store.offsets[client], store.offsets[client + 1]
    x[slot, : stop - start], y[slot, : stop - start] = store.x[start:stop], store.y[start:stop]
  return x, y


@settings(max_examples=40, deadline=None)
@given(
  counts=st.lists(st.integers(0, 30), min_size=1, max_size=12),
  picks=st.lists(st.integers(0, 11), min_size=1, max_size=8, unique=True),
)
def test_flat_rows_unpack_to_the_padded_layout(counts, picks):
  store = _store(counts)
  ids = np.array([p % store.num_clients for p in picks])
  ids = ids[np.sort(np.unique(ids, return_index=True)[1])]  # distinct, in the drawn order
  width = store.max_examples
  x, y, starts, num = store.flat(ids, bucket(int(store.num_examples[ids].sum())))
  assert len(x) >= num.sum()
  want_x, want_y = _padded_by_hand(store, ids, width)
  np.testing.assert_array_equal(np.asarray(unpack(x, starts, num, width)), want_x)
  np.testing.assert_array_equal(np.asarray(unpack(y, starts, num, width)), want_y)
  got_x, got_y, got_num = store.padded(ids, width)
  np.testing.assert_array_equal(got_x, want_x)
  np.testing.assert_array_equal(got_y, want_y)
  np.testing.assert_array_equal(got_num, np.diff(store.offsets)[ids])


def test_from_padded_and_from_indices_agree():
  counts = [5, 0, 12, 1]
  store = _store(counts)
  x, y, num = store.padded()
  again = ClientArrays.from_padded(x, y, num)
  np.testing.assert_array_equal(again.x, store.x)
  np.testing.assert_array_equal(again.offsets, store.offsets)
  order = [np.arange(5), np.arange(5, 5), np.arange(5, 17), np.arange(17, 18)]
  built = ClientArrays.from_indices(store.x, store.y, order)
  np.testing.assert_array_equal(built.x, store.x)
  np.testing.assert_array_equal(built.num_examples, counts)


def test_a_skewed_federation_costs_its_real_rows():
  """One client of 5,000 examples beside 999 of one: the padded layout would hold 5,000,000
  rows, the store holds 5,999."""
  counts = [5000] + [1] * 999
  store = _store(counts, features=8)
  assert store.total == 5999
  assert store.nbytes() < 5999 * (8 * 4 + 4) + 1001 * 8 + 1


def test_bad_offsets_are_named():
  with pytest.raises(ValueError, match="offsets must rise from 0 to the 4 rows of x"):
    ClientArrays(np.zeros((4, 2)), np.zeros(4), np.array([0, 3, 2, 4]))
  with pytest.raises(ValueError, match="4 rows of x but 3 of y"):
    ClientArrays(np.zeros((4, 2)), np.zeros(3), np.array([0, 4]))


def test_memory_mapped_store_gives_the_same_cohort(tmp_path, tiny_federation):
  data = tiny_federation
  data.train.save(tmp_path, "train")
  mapped = ClientArrays.load(tmp_path, "train")
  assert isinstance(mapped.x, np.memmap)
  ids = np.array([4, 0, 2])
  a = data.cohort(ids)
  b = FederatedData(mapped, data.test, data.global_test_x, data.global_test_y, 10).cohort(ids)
  for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(left), np.asarray(right))


def test_dropped_pages_of_a_memory_map_read_back_the_same(tmp_path):
  store = _store([300, 5, 4000], features=16)
  store.save(tmp_path, "train")
  mapped = ClientArrays.load(tmp_path, "train")
  drop_pages(mapped.x, 0, mapped.total)
  drop_pages(mapped.x, 17, 18)  # a part of a page
  np.testing.assert_array_equal(mapped.x, store.x)
  copy = np.array(store.x)
  drop_pages(copy, 0, len(copy))  # not a map: left alone
  np.testing.assert_array_equal(copy, store.x)


def test_a_cohort_moves_at_most_a_quarter_more_than_its_rows_in_few_shapes():
  """The flat buffer is the bucket of the cohort's rows: within 1.25x of them, and a thousand
  cohort totals fall into a handful of sizes."""
  totals = np.random.default_rng(0).integers(1_000, 100_000, 1_000)
  sizes = {bucket(int(t)) for t in totals}
  assert all(t <= bucket(int(t)) <= 1.25 * t + 1 for t in totals)
  assert len(sizes) <= 22  # log(100) / log(1.25) + 1


def test_the_round_sees_one_shape_whatever_the_cohort(tiny_federation):
  shapes = {tiny_federation.cohort(np.array(ids)).x.shape for ids in ([0, 1, 2], [1, 3, 5])}
  assert shapes == {(3, tiny_federation.max_examples, 8, 8, 1)}


def test_filled_up_cohort_has_empty_clients(tiny_federation):
  cohort = tiny_federation.cohort(np.array([2, 3]), size=8)
  np.testing.assert_array_equal(cohort.num_examples, [14, 7, 0, 0, 0, 0, 0, 0])
  assert not np.asarray(cohort.x[2:]).any()
  assert cohort.x.shape[:2] == (8, tiny_federation.max_examples)


def test_subset_keeps_the_chosen_clients(tiny_federation):
  part = tiny_federation.subset([5, 1])
  assert part.num_clients == 2
  np.testing.assert_array_equal(part.train_x[0], tiny_federation.train_x[5, : part.max_examples])
  np.testing.assert_array_equal(part.train_num_examples, tiny_federation.train_num_examples[[5, 1]])
