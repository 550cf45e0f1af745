"""A federation handed to ``run(config, data=...)`` is checked before anything compiles, and its
padding rows are inert whatever they hold (issue 28, item 5)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from fedjax_lab import run
from fedjax_lab.config import load_config
from fedjax_lab.data import FederatedData


def _config(tmp_path, data, *overrides):
  return load_config(
    None,
    [
      f"data.num_clients={data.num_clients}",
      "cohort_size=3",
      "rounds=2",
      "eval_every=2",
      "checkpoint_every=0",
      "local.batch_size=4",
      "local.epochs=2",
      f"out_dir={tmp_path}",
      *overrides,
    ],
  )


def _padded(data, **arrays):
  """``data`` rebuilt from its padded layout, with ``arrays`` replacing some of it."""
  fields = dict(
    train_x=data.train_x,
    train_y=data.train_y,
    train_num_examples=data.train_num_examples,
    test_x=data.test_x,
    test_y=data.test_y,
    test_num_examples=data.test_num_examples,
    global_test_x=data.global_test_x,
    global_test_y=data.global_test_y,
    num_classes=data.num_classes,
  )
  return FederatedData.from_padded(**{**fields, **{k: v.copy() for k, v in arrays.items()}})


def _rows(arrays, client, example):
  return arrays.offsets[client] + example


def _broken(data, case):
  """``tiny_federation`` with one defect (its clients hold 20, 2, 14, 7, 20 and 10 training
  examples)."""
  if case == "negative label":
    y = data.train.y.copy()
    y[_rows(data.train, 1, 1)] = -1
    return dataclasses.replace(data, train=data.train.replace_rows(y=y))
  if case == "label too large":
    y = data.test.y.copy()
    y[_rows(data.test, 0, 0)] = data.num_classes
    return dataclasses.replace(data, test=data.test.replace_rows(y=y))
  if case == "count past the padded axis":
    counts = data.train_num_examples.copy()
    counts[4] = data.max_examples + 5
    return _padded(data, train_num_examples=counts)
  if case == "negative count":
    counts = data.test_num_examples.copy()
    counts[2] = -1
    return _padded(data, test_num_examples=counts)
  if case == "NaN in a training example":
    x = data.train.x.copy()
    x[_rows(data.train, 3, 1), 5] = np.nan
    return dataclasses.replace(data, train=data.train.replace_rows(x=x))
  if case == "inf in the global test set":
    global_x = data.global_test_x.copy()
    global_x[7, 0] = np.inf
    return dataclasses.replace(data, global_test_x=global_x)
  if case == "labels shaped unlike inputs":
    return _padded(data, train_y=data.train_y[:, :-1])
  raise AssertionError(case)


@pytest.mark.parametrize(
  "case, message",
  [
    ("negative label", "client 1's train example 1 has label -1, outside [0, 10)"),
    ("label too large", "client 0's test example 0 has label 10, outside [0, 10)"),
    ("count past the padded axis", "train_num_examples[4] = 25 is outside [0, 20]"),
    ("negative count", "test_num_examples[2] = -1 is outside"),
    ("NaN in a training example", "client 3's train example 1 holds NaN or infinite inputs"),
    ("inf in the global test set", "global test example 7 holds NaN or infinite inputs"),
    ("labels shaped unlike inputs", "must share [num_clients, max_examples]"),
  ],
)
def test_bad_data_is_named_before_anything_compiles(tiny_federation, tmp_path, case, message):
  with pytest.raises(ValueError) as error:
    data = _broken(tiny_federation, case)
    run(_config(tmp_path, data), data=data, progress=False)
  assert message in str(error.value) and "\n" not in str(error.value)
  assert str(error.value).startswith("data")
  assert not (tmp_path / "metrics.jsonl").exists()


def test_a_client_count_unlike_the_config_is_named(tiny_federation, tmp_path):
  config = _config(tmp_path, tiny_federation, "data.num_clients=7")
  with pytest.raises(ValueError, match="data.num_clients must be the federation's client count 6"):
    run(config, data=tiny_federation, progress=False)


@pytest.mark.slow  # a whole run (make test-fast skips it)
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_nan_and_bad_labels_in_padding_rows_change_nothing(tiny_federation, tmp_path, strategy):
  """Padding a user hands in (``FederatedData.from_padded``) never reaches the engine, and the
  padding the engine makes is selected away: a federation whose padding rows hold NaN inputs
  and label -1 trains and evaluates bit-identically."""
  data = tiny_federation
  positions = np.arange(data.max_examples)[None]
  train_pad = positions >= data.train_num_examples[:, None]
  test_pad = np.arange(data.test_x.shape[1])[None] >= data.test_num_examples[:, None]
  assert train_pad.any() and test_pad.any()
  train_x, train_y, test_x = data.train_x.copy(), data.train_y.copy(), data.test_x.copy()
  train_x[train_pad], train_y[train_pad], test_x[test_pad] = np.nan, -1, np.inf
  poisoned = _padded(data, train_x=train_x, train_y=train_y, test_x=test_x)
  overrides = [f"execution.strategy={strategy}", "data.test_fraction=0.2"]
  clean = run(_config(tmp_path / "clean", data, *overrides), data=data, progress=False)
  dirty = run(_config(tmp_path / "dirty", data, *overrides), data=poisoned, progress=False)
  for a, b in zip(jax.tree.leaves(clean.state), jax.tree.leaves(dirty.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  strip = lambda rows: [{k: v for k, v in r.items() if k != "round_seconds"} for r in rows]
  assert strip(clean.metrics) == strip(dirty.metrics)
  assert np.isfinite(dirty.metrics[-1]["client_accuracy_mean"])
