"""Converting a StackOverflow-layout federation, timed: a generated HDF5 pair in TFF's
StackOverflow layout (``examples/<client>/{tokens, title, tags, score, creation_date, type}``)
with ``--clients`` training clients of heavy-tailed sizes (Zipf-like: most clients hold a few
sentences, a few hold hundreds; scaled down in examples so it fits this disk), converted by
``data.source=tff_h5`` (next-word prediction, the vocabulary built from the training clients),
then read back. Prints one JSON line: the generation and conversion seconds, the examples,
the cache's size on disk, and the process's peak RSS after the conversion (the generation's
own memory is freed first; peak RSS is a high-water mark, so the generation runs in a child
process). With ``--rounds R``, then trains on it through ``run`` (FedAvg, the StackOverflow
LSTM ``word_lstm`` over the 10,004 ids, cohort ``--cohort``, batch 16, one epoch of each
client's first 1,000 windows, as Reddi et al.'s task) for R rounds and adds the median
seconds of a round after the first, the bytes a round moves down and up, and the peak RSS
after training.

  python benchmarks/stackoverflow_conversion.py --clients 20000
  python benchmarks/stackoverflow_conversion.py --clients 342477 --rounds 6 --cohort 50
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

WORDS = [f"w{i}" for i in range(5000)]


def generate(folder: pathlib.Path, clients: int, seed: int) -> int:
  """The train and test files; returns the training sentences written."""
  import h5py

  rng = np.random.default_rng(seed)
  sizes = np.minimum(rng.zipf(1.8, clients), 500)  # heavy tail, capped to fit the disk
  popularity = 1.0 / np.arange(1, len(WORDS) + 1)
  popularity /= popularity.sum()
  total = 0
  for split, scale in (("train", 1), ("test", 0.2)):
    with h5py.File(folder / f"stackoverflow_{split}.h5", "w") as h5:
      for k, size in enumerate(sizes):
        count = max(1, int(size * scale))
        lengths = rng.integers(3, 30, count)
        words = rng.choice(len(WORDS), lengths.sum(), p=popularity)
        cuts = np.cumsum(lengths)[:-1]
        sentences = [" ".join(WORDS[i] for i in part) for part in np.split(words, cuts)]
        group = h5.create_group(f"examples/{k:08d}")
        group["tokens"] = np.array([s.encode() for s in sentences], dtype=object)
        for field in ("title", "tags", "creation_date", "type"):
          group[field] = np.array([b""] * count, dtype=object)
        group["score"] = np.zeros(count, np.int64)
        total += count if split == "train" else 0
  return total


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--clients", type=int, default=20000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--folder", default="", help="where the files go (default: a temp dir)")
  parser.add_argument("--rounds", type=int, default=0, help="then train this many rounds")
  parser.add_argument("--cohort", type=int, default=50)
  parser.add_argument("--set", action="append", default=[], help="a config override to train")
  parser.add_argument(
    "--reuse", action="store_true", help="keep --folder's files and conversion (train only)"
  )
  parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  folder = pathlib.Path(args.folder or tempfile.mkdtemp(prefix="stackoverflow_"))
  if args.generate_only:
    print(generate(folder, args.clients, args.seed))
    return
  started, sentences = time.perf_counter(), None
  command = [sys.executable, __file__, "--generate-only", "--folder", str(folder),
             "--clients", str(args.clients), "--seed", str(args.seed)]  # fmt: skip
  if not args.reuse:
    sentences = int(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
  generated = time.perf_counter() - started

  from fedjax_lab import build_federation, load_config

  config = load_config(None, ["data.source=tff_h5", f"data.source_dir={folder}",
                              "data.partition=natural", f"data.num_clients={args.clients}",
                              "data.sequence_length=20", "cohort_size=1"])  # fmt: skip
  started = time.perf_counter()
  data = build_federation(config.data)
  converted = time.perf_counter() - started
  cache = sum(f.stat().st_size for f in (folder / ".fedjax_lab").iterdir())
  record = {
    "clients": data.num_clients,
    "training_sentences": sentences,
    "train_examples": int(data.train.total),
    "largest_client": int(data.train.num_examples.max()),
    "generate_seconds": round(generated, 1),
    "convert_seconds": round(converted, 1),
    "cache_mib": round(cache / 2**20, 1),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
  }
  if args.rounds:
    record.update(train(config, folder, args.rounds, args.cohort, args.set))
  print(json.dumps(record))


def train(config, folder: pathlib.Path, rounds: int, cohort: int, extra: list) -> dict:
  """Seconds a round (median after the first, which compiles), bytes a round, peak RSS."""

  from fedjax_lab import load_config, run

  overrides = ["model.name=word_lstm", f"cohort_size={cohort}", f"rounds={rounds}",
               "local.batch_size=16", "local.learning_rate=0.3", "data.max_client_examples=1000",
               f"eval_every={rounds}", "eval_clients=50", "eval_global_examples=10000",
               "checkpoint_every=0", f"out_dir={folder / 'run'}"]  # fmt: skip
  fields = [f"data.{k}={v}" for k, v in (("source", "tff_h5"), ("source_dir", folder),
            ("partition", "natural"), ("num_clients", config.data.num_clients),
            ("sequence_length", 20))]  # fmt: skip
  shutil.rmtree(folder / "run", ignore_errors=True)  # a benchmark's own scratch run
  trained = run(load_config(None, fields + overrides + extra), progress=False)
  rows = [row for row in trained.metrics if "round_seconds" in row]
  return {
    "cohort": cohort,
    "overrides": extra,
    "round_seconds_median": round(float(np.median([r["round_seconds"] for r in rows[1:]])), 2),
    "first_round_seconds": round(rows[0]["round_seconds"], 1),
    "bytes_down_per_round": int(np.mean([r["bytes_down"] for r in rows])),
    "bytes_up_per_round": int(np.mean([r["bytes_up"] for r in rows])),
    "peak_rss_after_training_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "test_accuracy": round(float(trained.metrics[-1].get("global_accuracy", float("nan"))), 4),
  }


if __name__ == "__main__":
  main()
