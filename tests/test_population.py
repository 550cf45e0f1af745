"""Federations of population size (issue 30): clients made on demand cost nothing until they
are sampled, are the same examples every time, train end to end, and are evaluated on a seeded
sample of clients with its sampling error."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from fedjax_lab import build_federation, load_config, run
from fedjax_lab.cli import main
from fedjax_lab.data.code_files import python_files
from fedjax_lab.data.generated import GLOBAL_TEST_CLIENTS, GeneratedClients, synthetic_clients
from fedjax_lab.engine.evaluate import client_metrics
from fedjax_lab.evaluation import evaluated_clients


def test_a_million_clients_cost_their_size_array():
  data = synthetic_clients(1_000_000, seed=0)
  assert isinstance(data.train, GeneratedClients) and data.num_clients == 1_000_000
  assert data.train.total > 10**8  # examples that exist only when a client is gathered
  assert len(data.global_test_y) > GLOBAL_TEST_CLIENTS * 50
  cohort = data.cohort(np.array([3, 999_999, 123_456]))
  counts = data.train.num_examples[[3, 999_999, 123_456]]
  np.testing.assert_array_equal(cohort.num_examples, counts)


def test_a_client_is_a_pure_function_of_seed_and_id():
  a, b = synthetic_clients(1000, seed=4), synthetic_clients(50_000, seed=4)
  for client in (0, 17, 999):
    ax, ay = a.train.gather([client])
    bx, by = b.train.gather([client])
    np.testing.assert_array_equal(ax, bx)
    np.testing.assert_array_equal(ay, by)
  other, _ = synthetic_clients(1000, seed=5).train.gather([17])
  assert other.shape != a.train.gather([17])[0].shape or not np.array_equal(
    other, a.train.gather([17])[0]
  )


def test_train_and_test_splits_of_a_client_are_disjoint_parts_of_it():
  data = synthetic_clients(100, seed=1, test_fraction=0.25)
  whole = data.train.make(7)
  train_x, _ = data.train.gather([7])
  test_x, _ = data.test.gather([7])
  np.testing.assert_array_equal(np.concatenate([train_x, test_x]), whole[0])
  assert len(test_x) == round(0.25 * len(whole[0]))


def test_methods_that_need_every_example_in_arrays_are_refused_in_one_line(tmp_path):
  base = [
    "data.source=synthetic_clients",
    "data.partition=natural",
    "data.num_clients=1000",
    "cohort_size=4",
    "rounds=1",
    f"out_dir={tmp_path}",
  ]
  with pytest.raises(ValueError, match="^data: pooling every example .* clients made on demand"):
    run(load_config(None, [*base, "algorithm.name=centralized"]), progress=False)
  with pytest.raises(ValueError, match="data.group_shift=label_permutation needs a federation"):
    build_federation(load_config(None, [*base, "data.latent_groups=2"]).data)
  with pytest.raises(ValueError, match="data.partition must be 'natural' for data.source"):
    load_config(None, [*base[:1], "data.num_clients=10"])
  many = [*base[:2], "data.num_clients=20000", *base[3:]]
  with pytest.raises(ValueError, match=r"^eval_clients must be in \[1, 20000\] .* got 0; e.g."):
    run(load_config(None, many), progress=False)


@pytest.mark.slow  # a whole run (make test-fast skips it)
def test_fedavg_on_a_hundred_thousand_clients_with_sampled_evaluation(tmp_path):
  config = load_config(
    None,
    [
      "data.source=synthetic_clients",
      "data.partition=natural",
      "data.num_clients=100000",
      "cohort_size=10",
      "rounds=4",
      "eval_every=2",
      "eval_clients=64",
      "local.epochs=1",
      "local.batch_size=32",
      "checkpoint_every=0",
      f"out_dir={tmp_path}",
    ],
  )
  result = run(config, progress=False)
  last = result.metrics[-1]
  assert 0 < last["global_accuracy"] <= 1 and np.isfinite(last["train_loss"])
  assert 0 < last["client_accuracy_sem"] < 0.2
  chosen = evaluated_clients(config, 100_000)
  assert len(chosen) == 64 and np.array_equal(chosen, evaluated_clients(config, 100_000))


def test_eval_global_examples_scores_the_global_model_on_a_fixed_sample():
  from fedjax_lab.build import build_experiment
  from fedjax_lab.evaluation import evaluate, global_test_rows

  config = load_config(None, ["eval_global_examples=50", "data.num_clients=8"])
  rows = global_test_rows(config, 300)
  assert len(rows) == 50 and (np.diff(rows) > 0).all() and rows.max() < 300
  np.testing.assert_array_equal(rows, global_test_rows(config, 300))  # the same each time
  assert global_test_rows(config, 40) == slice(None)  # fewer examples than asked: all of them
  experiment = build_experiment(config)
  algorithm, data, model = experiment.algorithm, experiment.data, experiment.model
  state = algorithm.init(jax.random.key(0))
  got = evaluate(config, model, algorithm, state, data).metrics["global_accuracy"]
  chosen = global_test_rows(config, len(data.global_test_y))
  logits = model.apply(algorithm.global_params(state), data.global_test_x[chosen])
  expected = float((np.asarray(logits).argmax(-1) == data.global_test_y[chosen]).mean())
  assert got == pytest.approx(expected)


def test_sampling_error_is_the_finite_population_standard_error():
  sums = np.array([[3, 1.0, 4], [1, 2.0, 4], [4, 0.5, 4], [0, 0.0, 0]], float)
  metrics = client_metrics(sums, sequences=False, population=10)
  accuracy = np.array([0.75, 0.25, 1.0])
  want = accuracy.std(ddof=1) / np.sqrt(3) * np.sqrt(1 - 3 / 10)
  assert metrics["client_accuracy_sem"] == pytest.approx(want)
  assert "client_accuracy_sem" not in client_metrics(sums, sequences=False)


def test_python_files_are_one_client_each_cut_into_next_byte_windows(tmp_path):
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * 60)  # 360 bytes: 5 windows of 65
  (tmp_path / "short.py").write_text("y = 2\n" * 12)  # 72 bytes: one window
  (tmp_path / "tiny.py").write_text("z = 3\n")  # less than a window: left out
  data = python_files(str(tmp_path), sequence_length=64, test_fraction=0.2)
  np.testing.assert_array_equal(data.train_num_examples, [4, 1])
  np.testing.assert_array_equal(data.test_num_examples, [1, 0])
  window = np.frombuffer(("x = 1\n" * 60).encode()[:65], np.uint8)
  np.testing.assert_array_equal(data.train_x[0, 0], window[:-1])
  np.testing.assert_array_equal(data.train_y[0, 0], window[1:])
  assert data.num_classes == 256 and data.sequences


@pytest.mark.slow
def test_fedavg_on_every_installed_python_file(tmp_path):
  """The large offline text federation: one client per Python file this environment installed
  (about 10^4), a small byte-level Transformer, through the CLI."""
  clients = python_files(max_client_bytes=2048).num_clients
  assert clients > 2000
  code = main(
    [
      "data.source=python_files",
      "data.partition=natural",
      f"data.num_clients={clients}",
      "data.max_client_bytes=2048",
      "model.name=byte_lm",
      "cohort_size=10",
      "rounds=2",
      "eval_every=2",
      "eval_clients=50",
      "local.batch_size=8",
      "checkpoint_every=0",
      f"out_dir={tmp_path}",
    ]
  )
  assert code == 0
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["round"] == 2 and np.isfinite(rows[-1]["client_perplexity"])
