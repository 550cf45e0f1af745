"""The FedMR paper's own setting, timed: FedAvg training rounds on Fashion-MNIST, 100 clients of a
capped Dirichlet(0.1) split with full client data (23 to 3,204 examples), 10 per round, 5 local
epochs of batch 50, SGD lr 0.01 momentum 0.5, the official ``CNNFashionMnist`` shape
(``experiments/fedmr/official.json``).

``--framework jax`` runs this project (``--set`` overrides the config, e.g.
``execution.strategy=chunked``); ``--framework torch`` runs the same clients, the same cohorts
and the same step counts in a plain PyTorch loop written the way the official code trains (a
loop over clients, a fresh SGD optimizer per client, a shuffled ``DataLoader`` per epoch,
example-weighted averaging of the state dicts). Prints one JSON line: seconds per training round
(median over the measured rounds; the first ``--warmup`` rounds, compilation included, are
left out), real local steps per second, the ratio of computed to real steps, peak RSS.

  python benchmarks/official_fedmr.py --framework jax --rounds 8
  python benchmarks/official_fedmr.py --framework torch --rounds 8 --threads 2

PyTorch is not a dependency of the project: ``pip install torch==2.13.0`` into the venv first.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from fedjax_lab import build_federation, load_config

CONFIG = "experiments/fedmr/official.json"


def _cohorts(config, num_rounds: int) -> list[np.ndarray]:
  from fedjax_lab.round_step import cohort_ids

  return [
    cohort_ids(config.seed, r, config.data.num_clients, config.cohort_size)
    for r in range(num_rounds)
  ]


def _real_steps(config, data, cohort: np.ndarray) -> int:
  per_epoch = np.ceil(np.asarray(data.train_num_examples)[cohort] / config.local.batch_size)
  return int((config.local.epochs * per_epoch).sum())


def run_jax(config, data, rounds: int) -> tuple[list[float], list[float]]:
  """Seconds and computed/real step ratios per training round (no evaluation)."""
  import jax

  from fedjax_lab.algorithms import compiled_round
  from fedjax_lab.build import build_experiment
  from fedjax_lab.round_step import computed_step_ratio

  experiment = build_experiment(config, data)
  round_fn = compiled_round(experiment.algorithm, experiment.setup.executor, donate=True)
  state = experiment.algorithm.init(jax.random.key(config.seed))
  seconds, ratios = [], []
  for index, ids in enumerate(_cohorts(config, rounds)):
    cohort = data.cohort(ids)
    start = time.perf_counter()
    state, metrics = round_fn(state, cohort, jax.random.key(index))
    jax.block_until_ready((state, metrics))
    seconds.append(time.perf_counter() - start)
    ratios.append(computed_step_ratio(experiment.setup, cohort.num_examples))
  return seconds, ratios


def run_torch(config, data, rounds: int, threads: int) -> tuple[list[float], list[float]]:
  """The same rounds as a plain PyTorch loop over clients."""
  import torch
  from torch import nn
  from torch.utils.data import DataLoader, TensorDataset

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = nn.Sequential(
    nn.Conv2d(1, 16, 5), nn.MaxPool2d(2), nn.ReLU(),
    nn.Conv2d(16, 32, 5), nn.MaxPool2d(2), nn.ReLU(),
    nn.Flatten(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, data.num_classes),
  )  # fmt: skip
  global_state = {k: v.clone() for k, v in model.state_dict().items()}
  loss_fn = nn.CrossEntropyLoss()
  seconds = []
  for ids in _cohorts(config, rounds):
    start = time.perf_counter()
    states, weights = [], []
    for client in ids:
      n = int(data.train_num_examples[client])
      x = torch.from_numpy(np.ascontiguousarray(data.train_x[client, :n].transpose(0, 3, 1, 2)))
      y = torch.from_numpy(data.train_y[client, :n].astype(np.int64))
      loader = DataLoader(TensorDataset(x, y), batch_size=config.local.batch_size, shuffle=True)
      model.load_state_dict(global_state)
      optimizer = torch.optim.SGD(
        model.parameters(), lr=config.local.learning_rate, momentum=config.local.momentum
      )
      for _ in range(config.local.epochs):
        for batch_x, batch_y in loader:
          optimizer.zero_grad()
          loss_fn(model(batch_x), batch_y).backward()
          optimizer.step()
      states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
      weights.append(n)
    total = float(sum(weights))
    global_state = {k: sum(w / total * s[k] for w, s in zip(weights, states)) for k in global_state}
    seconds.append(time.perf_counter() - start)
  return seconds, [1.0] * len(seconds)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--framework", choices=("jax", "torch"), default="jax")
  parser.add_argument("--rounds", type=int, default=8, help="measured rounds after the warm-up")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--set", dest="overrides", action="append", default=[])
  args = parser.parse_args()
  config = load_config(CONFIG, ["algorithm.name=fedavg", *args.overrides])
  data = build_federation(config.data)
  total = args.warmup + args.rounds
  if args.framework == "jax":
    seconds, ratios = run_jax(config, data, total)
  else:
    seconds, ratios = run_torch(config, data, total, args.threads)
  steps = [_real_steps(config, data, ids) for ids in _cohorts(config, total)]
  measured = slice(args.warmup, total)
  print(
    json.dumps(
      {
        "framework": args.framework,
        "overrides": args.overrides,
        "sec_per_round_median": round(float(np.median(seconds[measured])), 3),
        "sec_per_round_mean": round(float(np.mean(seconds[measured])), 3),
        "real_steps_per_sec": round(sum(steps[measured]) / sum(seconds[measured]), 1),
        "computed_step_ratio": round(float(np.mean(ratios[measured])), 3),
        "first_round_sec": round(seconds[0], 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rounds": [round(s, 3) for s in seconds],
        "real_steps": steps,
      }
    )
  )


if __name__ == "__main__":
  main()
