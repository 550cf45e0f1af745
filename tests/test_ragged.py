"""The ragged client store (``data/ragged.py``) and the cohort it gathers: host memory follows
the real examples, a cohort moves only its own rows, and what reaches the methods is exactly
the padded layout they always read."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_lab.data import FederatedData, transfer
from fedjax_lab.data.ragged import ClientArrays, ProcessShard, drop_pages


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
    if client < 0:  # an empty client filling up the cohort
      continue
    start, stop = store.offsets[client], store.offsets[client + 1]
    x[slot, : stop - start], y[slot, : stop - start] = store.x[start:stop], store.y[start:stop]
  return x, y


@settings(max_examples=40, deadline=None)
@given(
  counts=st.lists(st.integers(0, 30), min_size=1, max_size=12),
  picks=st.lists(st.integers(0, 11), min_size=1, max_size=8, unique=True),
  chunk=st.sampled_from([1, 7, 64]),
  empty=st.integers(0, 3),
)
def test_rows_moved_in_chunks_land_in_the_padded_layout(counts, picks, chunk, empty):
  store = _store(counts)
  ids = np.array([p % store.num_clients for p in picks])
  ids = ids[np.sort(np.unique(ids, return_index=True)[1])]  # distinct, in the drawn order
  width = store.max_examples
  num = np.concatenate([store.num_examples[ids], np.zeros(empty, np.int32)])
  x, y = transfer.move_rows(store, ids, num, width, chunk)
  want_x, want_y = _padded_by_hand(store, np.concatenate([ids, np.full(empty, -1)]), width)
  np.testing.assert_array_equal(np.asarray(x), want_x)
  np.testing.assert_array_equal(np.asarray(y), want_y)
  got_x, got_y, got_num = store.padded(ids, width)
  np.testing.assert_array_equal(got_x, want_x[: len(ids)])
  np.testing.assert_array_equal(got_y, want_y[: len(ids)])
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


def test_a_cohort_moves_at_most_a_quarter_more_than_its_rows_in_one_chunk_shape():
  """A chunk is an eighth (down to a sixteenth) of the expected cohort's rows: a cohort of at
  least half the expected rows moves at most 1.25x them, in whole chunks of one shape."""
  expected = 20_000
  chunk = transfer.chunk_rows(expected)
  assert expected / 16 < chunk <= expected / 8
  for rows in np.random.default_rng(0).integers(expected // 2, 5 * expected, 1_000):
    moved = -(-int(rows) // chunk) * chunk
    assert rows <= moved <= 1.25 * rows
  assert transfer.chunk_rows(10) == transfer.MIN_CHUNK
  assert transfer.chunk_rows(expected, multiple=3) % 3 == 0


def test_moving_a_cohort_compiles_once_whatever_its_rows():
  store = _store(np.random.default_rng(1).integers(0, 400, 300))
  width, compiled = store.max_examples, []
  jax.monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: (
      compiled.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
    )
  )
  rng = np.random.default_rng(2)
  for round_index in range(12):
    ids = rng.choice(store.num_clients, 10, replace=False)
    transfer.move_rows(store, ids, store.num_examples[ids], width, chunk=256)
    if round_index == 1:
      after_warmup = len(compiled)
  assert len(compiled) == after_warmup


def test_a_process_shard_holds_and_gathers_only_its_own_clients(tmp_path):
  store = _store([4, 0, 9, 3, 7, 1, 2])
  shard = ProcessShard.of(store, 1, 3)  # clients 1 and 4
  assert shard.compact and shard.local.total == 0 + 7
  np.testing.assert_array_equal(shard.num_examples, store.num_examples)
  for got, want in zip(shard.gather([4, 1]), store.gather([4, 1])):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="process 1 of 3 holds the clients k % 3 == 1, not client 2"):
    shard.gather([1, 2])
  store.save(tmp_path, "train")
  mapped = ProcessShard.of(ClientArrays.load(tmp_path, "train"), 2, 3)  # reads, copies nothing
  assert not mapped.compact
  np.testing.assert_array_equal(mapped.gather([5])[0], store.gather([5])[0])


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
