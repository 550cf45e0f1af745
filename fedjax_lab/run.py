"""The host-side driver: sample cohorts, call the (jitted) round, evaluate, log, checkpoint and
resume. What a run is made of is built from its config by ``build.py``."""

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
from fedjax_lab.algorithms import Algorithm, compiled_round, payload_bytes
from fedjax_lab.build import build_experiment
from fedjax_lab.config import ExperimentConfig
from fedjax_lab.data import FederatedData
from fedjax_lab.engine.evaluate import evaluate_clients, evaluate_pooled, summarize_clients
from fedjax_lab.engine.execution import computed_steps
from fedjax_lab.engine.sharding import addressable, client_mesh, replicate, shard_clients
from fedjax_lab.models import Model


class TrainingDivergedError(RuntimeError):
  """The training loss became NaN or infinite; the run stopped before saving that state."""


@dataclasses.dataclass
class RunResult:
  config: ExperimentConfig
  metrics: list[dict]
  state: object
  out_dir: pathlib.Path
  wall_seconds: float


def computed_step_ratio(setup, num_examples) -> float:
  """Local steps computed (padding included) over the steps the cohort's clients really take:
  1.0 means no step was wasted (``engine.execution.computed_steps``)."""
  steps = np.asarray(setup.schedule.client_steps(np.asarray(num_examples)))
  unrolled = setup.schedule.max_steps if setup.unroll else None
  return computed_steps(setup.executor, steps, unrolled) / max(int(steps.sum()), 1)


def cohort_ids(seed: int, round_index: int, num_clients: int, cohort_size: int) -> np.ndarray:
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
  for key, label in (
    ("global_accuracy", "global model, pooled test"),
    ("client_accuracy_mean", "clients' models, own test (mean)"),
  ):
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


def evaluate(
  config: ExperimentConfig, model: Model, algorithm: Algorithm, state, data: FederatedData
) -> dict:
  """Global model on the pooled test set; each client's model on its own test split (when
  ``data.test_fraction > 0`` gave clients one)."""
  metrics = {}
  global_params = algorithm.global_params(state) if algorithm.global_params is not None else None
  if global_params is not None:
    pooled = evaluate_pooled(model.apply, global_params, data.global_test_x, data.global_test_y)
    metrics.update(global_accuracy=pooled["accuracy"], global_loss=pooled["loss"])
  if np.asarray(data.test_num_examples).sum() > 0:  # clients hold test splits of their own
    personal = algorithm.personal_params is not None
    params = algorithm.personal_params(state) if personal else global_params
    accuracy = evaluate_clients(
      model.apply,
      params,
      data.test_x,
      data.test_y,
      data.test_num_examples,
      personal=personal,
      chunk_size=config.execution.chunk_size,
    )
    metrics.update(summarize_clients(accuracy))
  if algorithm.client_clusters is not None and data.client_groups is not None:
    metrics["cluster_ari"] = float(
      adjusted_rand_score(data.client_groups, np.asarray(algorithm.client_clusters(state)))
    )
  return metrics


def run(
  config: ExperimentConfig,
  *,
  resume: bool = False,
  progress: bool = True,
  data: FederatedData | None = None,
) -> RunResult:
  """Run ``config`` and write ``config.json``, ``metrics.jsonl``/``.csv``, ``accuracy.png``
  and checkpoints to ``config.out_dir``. ``resume`` continues from the latest checkpoint.

  Under ``jax.distributed`` (several processes, ``execution.devices`` the global device count)
  every process runs this with the same config; the cohort is split over all processes'
  devices, and only process 0 writes the config, metrics and plot (orbax writes the replicated
  checkpoint from process 0 too)."""
  from tqdm.auto import tqdm

  started = time.perf_counter()
  mesh = client_mesh(config.execution.devices) if config.execution.devices > 1 else None
  experiment = build_experiment(config, data)
  data, train_data, algorithm = experiment.data, experiment.train_data, experiment.algorithm
  cohort_size = experiment.cohort_size
  bytes_down, bytes_up = payload_bytes(algorithm, experiment.setup)
  # The state is donated: each round writes the new state into the old one's buffers.
  round_fn = compiled_round(algorithm, experiment.setup.executor, donate=True)

  writer = jax.process_index() == 0
  out_dir = pathlib.Path(config.out_dir)
  if writer:
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

  bar = tqdm(
    range(start_round, config.rounds),
    initial=start_round,
    total=config.rounds,
    disable=not progress,
    desc=f"{config.algorithm.name}",
    unit="round",
  )
  for round_index in bar:
    tick = time.perf_counter()
    cohort = train_data.cohort(
      cohort_ids(config.seed, round_index, train_data.num_clients, cohort_size)
    )
    step_ratio = computed_step_ratio(experiment.setup, cohort.num_examples)
    round_key = jax.random.fold_in(rounds_key, round_index)
    if mesh is not None:
      cohort, round_key = shard_clients(cohort, mesh), replicate(round_key, mesh)
    state, round_metrics = round_fn(state, cohort, round_key)
    round_metrics = {name: float(value) for name, value in addressable(round_metrics).items()}
    train_loss = round_metrics["train_loss"]
    if not math.isfinite(train_loss):
      last = manager.latest_step() if manager else None
      raise TrainingDivergedError(
        f"round {round_index + 1}: training loss is {train_loss}; stopped without saving "
        f"this state (last good checkpoint: round {last}). Lower local.learning_rate?"
      )
    row = {
      "round": round_index + 1,
      "computed_step_ratio": step_ratio,
      **round_metrics,
      "bytes_down": bytes_down * cohort_size,
      "bytes_up": bytes_up * cohort_size,
      "round_seconds": time.perf_counter() - tick,
    }
    if (round_index + 1) % config.eval_every == 0 or round_index + 1 == config.rounds:
      row.update(evaluate(config, experiment.model, algorithm, addressable(state), data))
      bar.set_postfix(
        {k: f"{row[k]:.3f}" for k in ("global_accuracy", "client_accuracy_mean") if k in row}
      )
    rows.append(row)
    if writer:
      _write_metrics(out_dir, rows)
    if manager and (round_index + 1) % config.checkpoint_every == 0:
      checkpoint.save(manager, round_index + 1, state, rounds_key)
  if manager:
    manager.wait_until_finished()
  if writer:
    plot_accuracy(
      rows,
      out_dir / "accuracy.png",
      f"{config.algorithm.name} / {config.model.name} / {config.data.source} "
      f"{config.data.partition}",
    )
  return RunResult(config, rows, state, out_dir, time.perf_counter() - started)
