"""An image federation with FEMNIST's shape: build cost, peak memory and round time.

  python benchmarks/femnist_shape.py                       # held in memory (from_indices)
  python benchmarks/femnist_shape.py --mmap /tmp/femnist   # saved once, then memory-mapped
  PYTHONPATH=/path/to/old/checkout python benchmarks/femnist_shape.py   # an older store

3,597 clients (FEMNIST's writers) of ``normal(227, 89)`` examples clipped to [10, 650] (LEAF
reports 226.8 +- 88.9 per writer), 28x28x1 float32 pixels of seeded noise, 62 classes; no
client test splits (the rounds are what is compared; the global test set is 2,000 examples).
FedAvg with the FEMNIST CNN (``fedavg_cnn``), cohort 10, one local epoch of batch 20, the
backend's ``auto`` strategy. Prints one JSON line: seconds
to build the federation, seconds per round (median of rounds 2-6), peak RSS of this process.
With ``--mmap`` the federation is written once (by a child process, not counted) and this
process memory-maps it (``ClientArrays.load``): the pages a round touches are what it holds.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

CLIENTS = 3597


def federation():
  """The FEMNIST-shaped federation (module docstring), by ``FederatedData.from_indices``."""
  import numpy as np

  from fedjax_lab.data import FederatedData
  from fedjax_lab.data.sources import Dataset

  rng = np.random.default_rng(0)
  sizes = rng.normal(227, 89, CLIENTS).round().clip(10, 650).astype(np.int64)
  total = int(sizes.sum())
  x = rng.random((total, 28, 28, 1), dtype=np.float32)
  y = rng.integers(0, 62, total).astype(np.int32)
  dataset = Dataset(x, y, x[:2000], y[:2000], num_classes=62)
  clients = np.split(np.arange(total), np.cumsum(sizes)[:-1])
  return FederatedData.from_indices(dataset, clients, [indices[:0] for indices in clients])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mmap", help="a folder to write the federation to once, then map")
  parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--rounds", type=int, default=6)
  args = parser.parse_args()
  if args.write_only:
    data = federation()
    folder = pathlib.Path(args.mmap)
    data.train.save(folder, "train")
    data.test.save(folder, "test")
    import numpy as np

    np.save(folder / "global_x.npy", data.global_test_x)
    np.save(folder / "global_y.npy", data.global_test_y)
    return

  from fedjax_lab import load_config, run

  tick = time.perf_counter()
  if args.mmap:
    import numpy as np

    from fedjax_lab.data import FederatedData
    from fedjax_lab.data.ragged import ClientArrays

    folder = pathlib.Path(args.mmap)
    if not (folder / "train_x.npy").exists():
      subprocess.run([sys.executable, __file__, "--write-only", f"--mmap={folder}"], check=True)
      tick = time.perf_counter()
    data = FederatedData(
      ClientArrays.load(folder, "train"),
      ClientArrays.load(folder, "test"),
      np.load(folder / "global_x.npy"),
      np.load(folder / "global_y.npy"),
      62,
    )
  else:
    data = federation()
  build_seconds = time.perf_counter() - tick
  with tempfile.TemporaryDirectory() as out:
    config = load_config(
      None,
      [
        f"data.num_clients={CLIENTS}",
        "model.name=fedavg_cnn",
        "cohort_size=10",
        "local.epochs=1",
        "local.batch_size=20",
        f"rounds={args.rounds}",
        f"eval_every={args.rounds + 1}",
        "checkpoint_every=0",
        f"out_dir={out}",
      ],
    )
    metrics = run(config, data=data, progress=False).metrics
  seconds = [row["round_seconds"] for row in metrics[1:]]
  print(
    json.dumps(
      {
        "store": "mmap" if args.mmap else "ragged" if hasattr(data, "train") else "padded",
        "build_s": round(build_seconds, 1),
        "s_per_round": round(statistics.median(seconds), 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      }
    )
  )


if __name__ == "__main__":
  main()
