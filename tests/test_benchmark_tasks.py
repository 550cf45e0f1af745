"""Every config of experiments/benchmarks/ (the adaptive-optimization benchmark tasks) runs end
to end through the CLI for two rounds on small files written in TFF's published layout of its
dataset: the configs loop over the folder, so a new task is covered once its dataset has a
writer here."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from test_loaders import _tff_file

from fedjax_lab.cli import main
from fedjax_lab.config import load_config

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "experiments" / "benchmarks").glob("*.json"))


def _emnist(rng, n):
  return {
    "pixels": rng.random((n, 28, 28), dtype=np.float32),
    "label": rng.integers(0, 62, n).astype(np.int32),
  }


def _cifar100(rng, n):
  return {
    "image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
    "label": rng.integers(0, 100, n).astype(np.int64),
    "coarse_label": rng.integers(0, 20, n).astype(np.int64),
  }


def _shakespeare(rng, n):
  lines = [b"To be, or not to be, that is the question:", b"Whether 'tis nobler in the mind"]
  return {"snippets": np.array([lines[i % 2] * (1 + i % 3) for i in range(n)], dtype=object)}


def _stackoverflow(rng, n):
  words = "how do i jit a loop in jax when the loop is slow".split()
  text = lambda: " ".join(rng.choice(words, rng.integers(3, 30)))
  strings = lambda make: np.array([make().encode() for _ in range(n)], dtype=object)
  return {
    "tokens": strings(text),
    "title": strings(text),
    "tags": strings(lambda: "|".join(rng.choice(["python", "jax", "numpy"], 2, replace=False))),
    "score": np.zeros(n, np.int64),
    "creation_date": strings(lambda: "2010-01-01"),
    "type": strings(lambda: "question"),
  }


WRITERS = {
  "emnist": ("fed_emnist", _emnist),
  "cifar100": ("fed_cifar100", _cifar100),
  "shakespeare": ("shakespeare", _shakespeare),
  "stackoverflow": ("stackoverflow", _stackoverflow),
}


def test_every_benchmark_dataset_has_a_writer():
  datasets = {pathlib.Path(load_config(str(p)).data.source_dir).name for p in CONFIGS}
  assert datasets <= set(WRITERS), datasets - set(WRITERS)
  assert len(CONFIGS) >= 8


@pytest.mark.slow  # a whole run per task (make test-fast skips it)
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_each_benchmark_config_runs_two_rounds_on_files_of_its_layout(path, tmp_path):
  config = load_config(str(path))
  prefix, examples = WRITERS[pathlib.Path(config.data.source_dir).name]
  rng = np.random.default_rng(0)
  files = tmp_path / "files"
  files.mkdir()
  _tff_file(files / f"{prefix}_train.h5", {f"c{k}": examples(rng, 6 + 3 * k) for k in range(3)})
  _tff_file(files / f"{prefix}_test.h5", {f"c{k}": examples(rng, 4) for k in range(2)})
  code = main(
    [
      f"--config={path}",
      f"data.source_dir={files}",
      "data.num_clients=3",
      "cohort_size=2",
      "rounds=2",
      "eval_every=2",
      "checkpoint_every=0",
      f"out_dir={tmp_path / 'run'}",
      "--no-progress",
    ]
  )
  assert code == 0
  rows = [
    json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  ]
  assert rows[-1]["round"] == 2 and np.isfinite(rows[-1]["train_loss"])
  assert 0 <= rows[-1]["global_accuracy"] <= 1
