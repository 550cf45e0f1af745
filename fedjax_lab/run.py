"""The host-side driver: build data, model and algorithm from a config, then sample cohorts,
call the (jitted) round, evaluate, log, checkpoint and resume."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import time

import jax
import numpy as np
from sklearn.metrics import adjusted_rand_score

from fedjax_lab import checkpoint
from fedjax_lab.algorithms import ClientSetup, build_algorithm, client_optimizer
from fedjax_lab.config import DataConfig, ExperimentConfig
from fedjax_lab.data import FederatedData, groups, partition, sources
from fedjax_lab.engine.evaluate import evaluate_clients, evaluate_pooled, summarize_clients
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.engine.sharding import client_mesh, replicate, shard_clients
from fedjax_lab.models import Model, build_model


# Compile time grows linearly with unrolled steps (FEMNIST CNN: 4.6 s rolled, 15.9 s for 40
# unrolled steps) while each step runs 5x faster (16.6 ms against 83 ms): unrolling pays after a
# round or two even at this length.
MAX_UNROLLED_STEPS = 256


class TrainingDivergedError(RuntimeError):
  """The training loss became NaN or infinite; the run stopped before saving that state."""


def load_dataset(data: DataConfig) -> sources.Dataset:
  if data.source == "digits":
    return sources.digits(data.seed)
  if data.source == "fashion_mnist_idx":
    return sources.fashion_mnist_idx(data.source_dir or None)
  if data.source == "synthetic":
    return sources.synthetic(data.synthetic_alpha, data.synthetic_beta, data.num_clients,
                             data.seed)
  if data.source == "shakespeare":
    return sources.shakespeare(data.source_dir or "data/shakespeare", seed=data.seed)
  if data.source == "shakespeare_genre":
    return sources.shakespeare_genre(data.source_dir or "data/shakespeare", seed=data.seed)
  return sources.tfds_source(data.source.removeprefix("tfds:"), data_dir=data.source_dir or None,
                             coarse_labels=data.coarse_labels)


def partition_dataset(data: DataConfig, dataset: sources.Dataset) -> list[np.ndarray]:
  labels, seed = dataset.train_y, data.seed
  if data.partition == "iid":
    return partition.iid(len(labels), data.num_clients, seed)
  if data.partition in ("dirichlet", "dirichlet_capped"):
    if labels.ndim != 1:
      raise ValueError(f"data.partition={data.partition!r} needs one label per example; "
                       "use 'natural' or 'iid' for sequence data")
    return partition.dirichlet(labels, data.num_clients, data.alpha, seed,
                               min_examples=data.min_examples,
                               balance_cap=data.partition == "dirichlet_capped")
  if data.partition == "shards":
    return partition.shards(labels, data.num_clients, data.classes_per_client, seed)
  if data.partition == "quantity_skew":
    return partition.quantity_skew(len(labels), data.num_clients, data.sigma, seed)
  if dataset.train_groups is None:
    raise ValueError(f"data.partition='natural' needs a source with natural groups "
                     f"(synthetic, shakespeare); {data.source} has none")
  clients = partition.natural(dataset.train_groups)
  if len(clients) < data.num_clients:
    raise ValueError(f"data.num_clients={data.num_clients} exceeds the {len(clients)} natural "
                     f"groups of {data.source}")
  if len(clients) == data.num_clients:
    return clients
  chosen = np.random.default_rng(data.seed).choice(len(clients), data.num_clients, replace=False)
  return [clients[k] for k in np.sort(chosen)]


def build_federation(data: DataConfig) -> FederatedData:
  """Source, partition and per-client train/test split, as the config says; then the latent
  group shift (``data.latent_groups``), or Shakespeare's genres as known client groups."""
  dataset = load_dataset(data)
  clients = partition_dataset(data, dataset)
  if data.max_client_examples > 0:
    clients = [indices[:data.max_client_examples] for indices in clients]
  train, test = partition.train_test_split(clients, data.test_fraction, data.seed + 1)
  federation = FederatedData.from_indices(dataset, train, test)
  if data.latent_groups > 0:
    return groups.shift_by_group(federation, groups.contiguous_groups(data.num_clients,
                                                                      data.latent_groups),
                                 data.group_shift, data.seed + 2)
  if data.source == "shakespeare" and data.partition == "natural":
    names = [dataset.group_names[dataset.train_groups[indices[0]]] for indices in clients]
    return dataclasses.replace(federation, client_groups=groups.shakespeare_genres(names))
  return federation


def resolve_execution(config: ExperimentConfig, model: Model, max_steps: int) -> tuple[str, bool]:
  """``auto`` rules: vmap everywhere except convolutional models on CPU, which use the per-client
  loop with fully unrolled local steps (up to ``MAX_UNROLLED_STEPS``) because XLA:CPU runs
  vmapped per-client convolutions, and convolutions inside any loop (``lax.scan``, even partly
  unrolled), several times slower (docs/performance.md)."""
  on_cpu = jax.default_backend() == "cpu"
  conv_on_cpu = on_cpu and model.has_conv
  strategy = config.execution.strategy
  if strategy == "auto":
    strategy = "loop" if conv_on_cpu else "vmap"
  unroll = config.execution.unroll
  if unroll == "auto":
    unroll = "unroll" if conv_on_cpu and max_steps <= MAX_UNROLLED_STEPS else "scan"
  return strategy, unroll == "unroll"


@dataclasses.dataclass
class RunResult:
  config: ExperimentConfig
  metrics: list[dict]
  state: object
  out_dir: pathlib.Path
  wall_seconds: float


def _cohort_ids(seed: int, round_index: int, num_clients: int, cohort_size: int) -> np.ndarray:
  """Uniform without replacement; a pure function of (seed, round) so resuming repeats it."""
  rng = np.random.default_rng([seed, round_index])
  return np.sort(rng.choice(num_clients, cohort_size, replace=False)).astype(np.int32)


def _read_metrics(path: pathlib.Path, up_to_round: int) -> list[dict]:
  if not path.exists():
    return []
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [row for row in rows if row["round"] <= up_to_round]


def _write_metrics(out_dir: pathlib.Path, rows: list[dict]) -> None:
  (out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  columns = list(dict.fromkeys(key for row in rows for key in row))
  with open(out_dir / "metrics.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)


def plot_accuracy(rows: list[dict], path: pathlib.Path, title: str = "") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  for key, label in (("global_accuracy", "global model, pooled test"),
                     ("client_accuracy_mean", "clients' models, own test (mean)")):
    points = [(r["round"], r[key]) for r in rows if key in r]
    if points:
      ax.plot(*zip(*points), marker="o", markersize=3, label=label)
  ax.set_xlabel("round")
  ax.set_ylabel("accuracy")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def evaluate(config: ExperimentConfig, model: Model, algorithm, state,
             data: FederatedData) -> dict:
  """Global model on the pooled test set; each client's model on its own test split."""
  metrics = {}
  global_params = algorithm.global_params(state)
  if global_params is not None:
    pooled = evaluate_pooled(model.apply, global_params, data.global_test_x, data.global_test_y)
    metrics.update(global_accuracy=pooled["accuracy"], global_loss=pooled["loss"])
  personal = algorithm.personal_params is not None
  params = algorithm.personal_params(state) if personal else global_params
  accuracy = evaluate_clients(model.apply, params, data.test_x, data.test_y,
                              data.test_num_examples, personal=personal,
                              chunk_size=config.execution.chunk_size)
  metrics.update(summarize_clients(accuracy))
  if algorithm.client_clusters is not None and data.client_groups is not None:
    metrics["cluster_ari"] = float(adjusted_rand_score(data.client_groups,
                                                       np.asarray(algorithm.client_clusters(state))))
  return metrics


def run(config: ExperimentConfig, *, resume: bool = False, progress: bool = True,
        data: FederatedData | None = None) -> RunResult:
  """Run ``config`` and write ``config.json``, ``metrics.jsonl``/``.csv``, ``accuracy.png``
  and checkpoints to ``config.out_dir``. ``resume`` continues from the latest checkpoint."""
  from tqdm.auto import tqdm
  started = time.perf_counter()
  mesh = client_mesh(config.execution.devices) if config.execution.devices > 1 else None
  data = data if data is not None else build_federation(config.data)
  train_data = data.pooled() if config.algorithm.name == "centralized" else data
  cohort_size = 1 if config.algorithm.name == "centralized" else config.cohort_size
  model = build_model(config.model.name, data.num_classes, config.model.conv)
  schedule = LocalSchedule(config.local.batch_size, train_data.max_examples, config.local.epochs,
                           config.local.steps)
  strategy, unroll = resolve_execution(config, model, schedule.max_steps)
  setup = ClientSetup(model, train_data.train_x[0, :1],
                      client_optimizer(config.local.optimizer, config.local.learning_rate,
                                       config.local.momentum),
                      schedule, Executor(strategy, config.execution.chunk_size),
                      train_data.num_clients, unroll, config.execution.compute_dtype)
  algorithm = build_algorithm(config, setup, train_data.client_groups)
  # The state is donated: each round writes the new state into the old one's buffers.
  round_fn = (jax.jit(algorithm.round, donate_argnums=0) if algorithm.jit_round
              else algorithm.round)

  out_dir = pathlib.Path(config.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
  init_key, rounds_key = jax.random.split(jax.random.key(config.seed))
  state = algorithm.init(init_key)
  manager = checkpoint.manager(out_dir / "checkpoints") if config.checkpoint_every else None
  start_round, rows = 0, []
  if resume:
    if manager is None or manager.latest_step() is None:
      raise FileNotFoundError(f"--resume: no checkpoint in {out_dir / 'checkpoints'}")
    state, start_round = checkpoint.restore(manager, state, rounds_key)
    rows = _read_metrics(out_dir / "metrics.jsonl", start_round)
  if mesh is not None:
    state = replicate(state, mesh)

  bar = tqdm(range(start_round, config.rounds), initial=start_round, total=config.rounds,
             disable=not progress, desc=f"{config.algorithm.name}", unit="round")
  for round_index in bar:
    tick = time.perf_counter()
    cohort = train_data.cohort(_cohort_ids(config.seed, round_index, train_data.num_clients,
                                           cohort_size))
    if mesh is not None:
      cohort = shard_clients(cohort, mesh)
    state, round_metrics = round_fn(state, cohort, jax.random.fold_in(rounds_key, round_index))
    round_metrics = {name: float(value) for name, value in round_metrics.items()}
    train_loss = round_metrics["train_loss"]
    if not math.isfinite(train_loss):
      last = manager.latest_step() if manager else None
      raise TrainingDivergedError(
          f"round {round_index + 1}: training loss is {train_loss}; stopped without saving "
          f"this state (last good checkpoint: round {last}). Lower local.learning_rate?")
    row = {"round": round_index + 1, **round_metrics,
           "bytes_down": algorithm.bytes_down * cohort_size,
           "bytes_up": algorithm.bytes_up * cohort_size,
           "round_seconds": time.perf_counter() - tick}
    if (round_index + 1) % config.eval_every == 0 or round_index + 1 == config.rounds:
      row.update(evaluate(config, model, algorithm, state, data))
      bar.set_postfix({k: f"{row[k]:.3f}" for k in ("global_accuracy", "client_accuracy_mean")
                       if k in row})
    rows.append(row)
    _write_metrics(out_dir, rows)
    if manager and (round_index + 1) % config.checkpoint_every == 0:
      checkpoint.save(manager, round_index + 1, state, rounds_key)
  if manager:
    manager.wait_until_finished()
  plot_accuracy(rows, out_dir / "accuracy.png",
                f"{config.algorithm.name} / {config.model.name} / {config.data.source} "
                f"{config.data.partition}")
  return RunResult(config, rows, state, out_dir, time.perf_counter() - started)
