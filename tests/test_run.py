"""Runner: reproducibility, resume, validation before compilation, NaN handling, CLI."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from fedjax_lab import run
from fedjax_lab.cli import main
from fedjax_lab.config import (
  AlgorithmConfig,
  DataConfig,
  ExperimentConfig,
  LocalConfig,
  load_config,
)
from fedjax_lab.data.catalog import DirichletOptions

pytestmark = pytest.mark.slow  # whole runs through the runner and the CLI (make test-fast skips it)

BASE = ExperimentConfig(
  data=DataConfig(source="digits", num_clients=8, partition_options=DirichletOptions(0.5, 15)),
  local=LocalConfig(batch_size=16),
  algorithm=AlgorithmConfig("scaffold"),
  rounds=10,
  cohort_size=4,
  eval_every=2,
  checkpoint_every=5,
)


def _comparable(rows):
  return [{k: v for k, v in row.items() if k != "round_seconds"} for row in rows]


def test_resume_continues_bit_identically(tmp_path):
  config = dataclasses.replace(BASE, eval_every=5)  # the 5-round run also evaluates at its end
  straight = run(dataclasses.replace(config, out_dir=str(tmp_path / "a")), progress=False)
  half = dataclasses.replace(config, out_dir=str(tmp_path / "b"), rounds=5)
  run(half, progress=False)
  resumed = run(dataclasses.replace(half, rounds=10), resume=True, progress=False)
  assert _comparable(resumed.metrics) == _comparable(straight.metrics)
  jax.tree.map(np.testing.assert_array_equal, resumed.state, straight.state)
  assert (tmp_path / "b" / "accuracy.png").exists()
  assert json.loads((tmp_path / "b" / "config.json").read_text())["rounds"] == 10
  lines = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
  header = lines[0].split(",")
  assert len(lines) == 11 and header[0] == "round" and "train_loss" in header


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
  config = dataclasses.replace(BASE, rounds=2, checkpoint_every=0)
  a = run(dataclasses.replace(config, out_dir=str(tmp_path / "a")), progress=False).metrics
  b = run(dataclasses.replace(config, out_dir=str(tmp_path / "b")), progress=False).metrics
  c = run(dataclasses.replace(config, out_dir=str(tmp_path / "c"), seed=1), progress=False).metrics
  assert _comparable(a) == _comparable(b) != _comparable(c)


def test_data_errors_come_before_any_compilation(tmp_path, monkeypatch):
  def no_tracing(*args, **kwargs):
    raise AssertionError("compiled before validating the data")

  monkeypatch.setattr(jax, "jit", no_tracing)
  config = dataclasses.replace(
    BASE, data=DataConfig(source="digits", num_clients=2000), out_dir=str(tmp_path), cohort_size=4
  )
  with pytest.raises(ValueError, match="data.num_clients=2000 exceeds the 1438 examples"):
    run(config, progress=False)
  config = dataclasses.replace(
    BASE,
    data=DataConfig(source="digits", num_clients=50, partition_options=DirichletOptions(0.05, 25)),
    out_dir=str(tmp_path),
  )
  with pytest.raises(ValueError, match="fewer than data.dirichlet.min_examples=25"):
    run(config, progress=False)


def test_cli_runs_a_toml_config_with_overrides(tmp_path, capsys):
  config_file = tmp_path / "exp.toml"
  config_file.write_text(
    'rounds = 2\ncohort_size = 3\n[data]\nsource = "digits"\n'
    "num_clients = 6\n[local]\nbatch_size = 32\n"
  )
  assert (
    main(
      ["--config", str(config_file), f"out_dir={tmp_path / 'out'}", "eval_every=1", "--no-progress"]
    )
    == 0
  )
  printed = capsys.readouterr().out
  assert "global_acc" in printed and "fedavg" in printed
  assert (tmp_path / "out" / "metrics.jsonl").exists()
  assert main(["data.dirichlet.alpha=0"]) == 2
  assert "data.dirichlet.alpha must be > 0" in capsys.readouterr().err


def test_next_character_federation_trains_a_language_model(tmp_path):
  """Shakespeare-style pipeline end to end: plays -> (play, character) clients -> Transformer LM."""
  from fedjax_lab.data import FederatedData, partition, sources

  speech = "\n\n".join(
    f"{who}.\n" + " ".join(["the king is dead long live the king"] * 6)
    for who in ("Ham", "Hor", "Oph")
    for _ in range(4)
  )
  (tmp_path / "play_gut.txt").write_text(speech)
  dataset = sources.shakespeare(str(tmp_path), sequence_length=16, min_chars=50)
  train, test = partition.train_test_split(partition.natural(dataset.train_groups), 0.25, 0)
  data = FederatedData.from_indices(dataset, train, test)
  config = load_config(
    None,
    [
      "model.name=transformer_lm",
      "data.source=shakespeare",
      "data.partition=natural",
      "data.num_clients=3",
      "cohort_size=3",
      "rounds=8",
      "eval_every=4",
      "checkpoint_every=0",
      "local.optimizer=adam",
      "local.learning_rate=0.01",
      "local.batch_size=8",
      f"out_dir={tmp_path / 'out'}",
    ],
  )
  metrics = run(config, data=data, progress=False).metrics
  assert metrics[-1]["train_loss"] < 0.5 * metrics[0]["train_loss"]
  assert metrics[-1]["global_accuracy"] > 0.5  # a repetitive text is easy to predict


def test_a_federation_without_client_test_splits_reports_the_global_model(tmp_path):
  """``data.test_fraction=0`` (the FedMR official setting: global test set only): no per-client
  metrics, no crash; the summary row still reads."""
  from fedjax_lab.tables import summary_row

  config = dataclasses.replace(
    BASE,
    data=dataclasses.replace(BASE.data, test_fraction=0.0),
    algorithm=AlgorithmConfig("fedavg"),
    rounds=2,
    eval_every=1,
    checkpoint_every=0,
    out_dir=str(tmp_path),
  )
  result = run(config, progress=False)
  assert "global_accuracy" in result.metrics[-1]
  assert "client_accuracy_mean" not in result.metrics[-1]
  assert summary_row("fedavg", result)["rounds"] == 2
