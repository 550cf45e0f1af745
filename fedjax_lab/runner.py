"""The host-side driver: sample cohorts, call the (jitted) round, evaluate, log, checkpoint and
resume. What a run is made of is built from its config by ``build.py``."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import adjusted_rand_score

from fedjax_lab import checkpoint, run_folder
from fedjax_lab.algorithms import ALGORITHMS, Algorithm, compiled_round, payload_bytes
from fedjax_lab.build import build_experiment
from fedjax_lab.config import ExperimentConfig
from fedjax_lab.data import Cohort, FederatedData
from fedjax_lab.engine.evaluate import (
  client_accuracies,
  client_metrics,
  client_test_sums,
  evaluate_pooled,
)
from fedjax_lab.engine.execution import computed_steps
from fedjax_lab.engine.sharding import (
  addressable,
  client_mesh,
  client_sharding,
  replicate,
  shard_clients,
)
from fedjax_lab.hooks import Hook, RoundEnd, record_stop, recorded_stop, round_end, run_end
from fedjax_lab.models import Model
from fedjax_lab.ops import accounting
from fedjax_lab.ops.systems import round_outcome
from fedjax_lab.plots import pyplot
from fedjax_lab.profiling import PROFILE_FOLDER
from fedjax_lab.writers import WriterSet, check_installed

# Poisson cohorts are padded with empty clients to a multiple of this: few shapes to compile
POISSON_PADDING = 8
ADAPTATION_STREAM = 0xADA  # fold_in constant: local adaptation's keys, apart from training's
EVALUATION_BLOCK = 512  # clients whose test splits are evaluated together
EVALUATION_STREAM = 0xE7A1  # the seed's stream that draws eval_clients


class TrainingDivergedError(RuntimeError):
  """The training loss or the state became NaN or infinite; the run stopped before saving it."""


class RunInterrupted(RuntimeError):
  """SIGINT or SIGTERM stopped the run after a completed round, its checkpoint written.

  ``reason``: what happened; ``arguments``: the ``fedjax-lab`` arguments that continue the run
  (or start it over, when it kept no checkpoint), less the caller's ``--plugin`` files."""

  def __init__(self, reason: str, arguments: list[str]):
    self.reason, self.arguments = reason, arguments
    super().__init__(self.describe())

  def describe(self, plugins=()) -> str:
    """The reason and the full command, with ``--plugin`` for each of ``plugins``."""
    words = [word for plugin in plugins for word in ("--plugin", plugin)] + self.arguments
    return f"{self.reason}: fedjax-lab {' '.join(words)}"


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


def cohort_ids(
  seed: int, round_index: int, num_clients: int, cohort_size: int, sampling: str = "fixed"
) -> np.ndarray:
  """The round's clients, sorted: ``cohort_size`` uniformly without replacement (``fixed``), or
  each client independently with probability ``cohort_size / num_clients`` (``poisson``; any
  size, empty included). A pure function of (seed, round) so resuming repeats it."""
  rng = np.random.default_rng([seed, round_index])
  if sampling == "poisson":
    return np.flatnonzero(rng.random(num_clients) < cohort_size / num_clients).astype(np.int32)
  return np.sort(rng.choice(num_clients, cohort_size, replace=False)).astype(np.int32)


def padded_cohort(
  data: FederatedData, client_ids: np.ndarray, multiple: int, sharding=None
) -> Cohort:
  """The cohort of ``client_ids`` filled up with empty clients (no examples: no local steps,
  aggregation weight 0) to the smallest positive multiple of ``multiple``, so that Poisson
  cohorts of every size share a few compiled shapes."""
  size = max(multiple, -(-len(client_ids) // multiple) * multiple)
  return data.cohort(client_ids, size=size, sharding=sharding)


def plot_accuracy(rows: list[dict], path: pathlib.Path, title: str = "") -> None:
  plt = pyplot()

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


def local_adaptation(experiment):
  """None unless ``eval_finetune_epochs > 0``; then ``adapt(params, client_ids) -> [clients,
  ...]``: those clients' copies of ``params`` after that many epochs on their own training
  splits (``ClientSetup.local_adaptation``; each client's shuffling key the same at every
  evaluation)."""
  config, data = experiment.config, experiment.data
  if config.eval_finetune_epochs == 0:
    return None
  if experiment.algorithm.global_params is None:
    raise ValueError(
      f"eval_finetune_epochs must be 0 for {config.algorithm.name}: it has no global model to adapt"
    )
  adapt = experiment.setup.local_adaptation(config.eval_finetune_epochs)
  adapt = jax.jit(adapt) if experiment.setup.executor.jit_round else adapt
  keys = jax.random.split(
    jax.random.fold_in(jax.random.key(config.seed), ADAPTATION_STREAM), data.num_clients
  )

  def adapt_clients(params, client_ids):
    x, y, counts = data.train.padded(client_ids, width=data.max_examples)
    return adapt(params, x, y, counts, keys[client_ids])

  return adapt_clients


def evaluated_clients(config: ExperimentConfig, num_clients: int) -> np.ndarray:
  """The clients whose own test splits are evaluated: every one, or ``config.eval_clients``
  of them drawn once from the seed (sorted; the same at every evaluation)."""
  if config.eval_clients in (0, num_clients):
    return np.arange(num_clients)
  rng = np.random.default_rng([config.seed, EVALUATION_STREAM])
  return np.sort(rng.choice(num_clients, config.eval_clients, replace=False))


def evaluation_blocks(client_ids: np.ndarray, block: int = EVALUATION_BLOCK) -> list[np.ndarray]:
  """``client_ids`` in blocks of ``min(block, len(client_ids))``, the last one filled up with
  its first client (``evaluate`` drops the filler's results): one shape, one compilation."""
  if len(client_ids) == 0:
    return []
  block = min(block, len(client_ids))
  filled = np.resize(client_ids, -(-len(client_ids) // block) * block)
  return list(filled.reshape(-1, block))


class Evaluation(NamedTuple):
  """``evaluate``'s result: the ``metrics`` (a row's evaluation columns) and ``clients``: the
  evaluated ``client_ids`` with each one's ``client_accuracy`` (and ``adapted_client_accuracy``
  with local adaptation), ``[evaluated clients]`` arrays; empty without client test splits."""

  metrics: dict
  clients: dict[str, np.ndarray]


def evaluate(
  config: ExperimentConfig,
  model: Model,
  algorithm: Algorithm,
  state,
  data: FederatedData,
  adapt=None,
) -> Evaluation:
  """Global model on the pooled test set; each client's model on its own test split (when
  ``data.test_fraction > 0`` gave clients one); with ``adapt`` (``local_adaptation``) also
  each client's adapted global model on its split, as ``adapted_client_*``. Clients
  (``evaluated_clients``: all, or ``eval_clients`` of them) are evaluated in blocks of
  ``EVALUATION_BLOCK`` (``evaluation_blocks``): memory follows a block, not the federation."""
  metrics, per_client = {}, {}
  global_params = algorithm.global_params(state) if algorithm.global_params is not None else None
  if global_params is not None:
    pooled = evaluate_pooled(model.apply, global_params, data.global_test_x, data.global_test_y)
    metrics.update(global_accuracy=pooled["accuracy"], global_loss=pooled["loss"])
  if data.test.total > 0:  # clients hold test splits of their own
    models_of = client_models(algorithm, state)
    personal = models_of is not None
    width, sums, adapted = data.test.max_examples, [], []
    clients = evaluated_clients(config, data.num_clients)
    held = clients[data.test.owner(clients) == jax.process_index()]  # all, with one process
    for ids in evaluation_blocks(held):
      x, y, counts = data.test.padded(ids, width)
      block_params = models_of(ids) if personal else global_params
      test = lambda params, personal: client_test_sums(
        model.apply,
        params,
        x,
        y,
        counts,
        personal=personal,
        chunk_size=config.execution.chunk_size,
      )
      sums.append(test(block_params, personal))
      if adapt is not None:
        adapted.append(test(adapt(global_params, ids), True))
    paths = None if data.client_paths is None else [data.client_paths[k] for k in clients]
    population = data.num_clients if len(clients) < data.num_clients else None
    per_client["client_ids"] = clients
    for prefix, blocks in (("", sums), ("adapted_", adapted if adapt is not None else None)):
      if blocks is None:
        continue
      gathered = _from_every_process(held, blocks, clients)
      summary = client_metrics(gathered, data.sequences, paths, population)
      metrics.update((f"{prefix}{k}", v) for k, v in summary.items())
      per_client[f"{prefix}client_accuracy"] = client_accuracies(gathered)
  if algorithm.client_clusters is not None and data.client_groups is not None:
    metrics["cluster_ari"] = float(
      adjusted_rand_score(data.client_groups, np.asarray(algorithm.client_clusters(state)))
    )
  return Evaluation(metrics, per_client)


def client_models(algorithm: Algorithm, state):
  """``models(client_ids) -> [len(client_ids), ...]``: the models those clients use, from
  ``Algorithm.personal_params_of`` (only those rows built) or rows of ``personal_params``;
  None when every client uses the global model."""
  if algorithm.personal_params_of is not None:
    return lambda ids: algorithm.personal_params_of(state, ids)
  if algorithm.personal_params is not None:
    stacked = algorithm.personal_params(state)
    return lambda ids: jax.tree.map(lambda leaf: leaf[ids], stacked)
  return None


def _from_every_process(held: np.ndarray, blocks: list, clients: np.ndarray) -> np.ndarray:
  """``[len(clients), ...]``: the per-client results this process computed for ``held`` (in
  ``blocks``, filler rows after) with every other process's for its own clients, in the order
  of ``clients`` (sorted); with one process, ``held`` is ``clients``."""
  mine = np.concatenate([np.asarray(b) for b in blocks])[: len(held)] if blocks else None
  if jax.process_count() == 1:
    return mine
  from jax.experimental import multihost_utils

  most = int(np.bincount(clients % jax.process_count()).max())
  values = np.zeros((most, 3), np.float32)  # client_test_sums' three columns
  ids = np.full(most, -1, np.int64)
  if mine is not None:
    values[: len(held)], ids[: len(held)] = mine, held
  values = np.asarray(multihost_utils.process_allgather(values)).reshape(-1, 3)
  ids = np.asarray(multihost_utils.process_allgather(ids)).reshape(-1)
  return values[ids >= 0][np.argsort(ids[ids >= 0])]


@jax.jit
def _all_finite(tree) -> jax.Array:
  """Whether every inexact leaf of ``tree`` is finite (integer leaves always are)."""
  leaves = [jnp.isfinite(l).all() for l in jax.tree.leaves(tree) if jnp.issubdtype(l, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _divergence_hint(config: ExperimentConfig) -> str:
  rates = [f"local.learning_rate (now {config.local.learning_rate})"]
  if config.algorithm.name in ("fedopt", "scaffold"):  # the methods with a server step size
    rates.append(f"server.learning_rate (now {config.server.learning_rate})")
  return "lower " + " or ".join(rates)


@contextlib.contextmanager
def _stop_requests():
  """While open, SIGINT and SIGTERM ask the run to stop after the current round (the list
  yielded gets the signal's name); a second signal stops it at once (``KeyboardInterrupt``,
  pending checkpoints still awaited). Only the main thread can take signals: elsewhere the
  list stays empty."""
  requested: list[str] = []
  if threading.current_thread() is not threading.main_thread():
    yield requested
    return

  def request_stop(signum, frame):
    if requested:
      raise KeyboardInterrupt
    requested.append(signal.Signals(signum).name)

  previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield requested
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)


def _report(message: str) -> None:
  print(f"fedjax-lab: {message}", file=sys.stderr, flush=True)


def run(
  config: ExperimentConfig,
  *,
  resume: bool = False,
  overwrite: bool = False,
  progress: bool = True,
  data: FederatedData | None = None,
  profile: tuple[int, int] | None = None,
  hooks: Sequence[Hook] = (),
) -> RunResult:
  """Run ``config`` and write ``config.json``, ``metrics.jsonl``/``.csv``, ``accuracy.png``,
  the last evaluation's ``client_accuracy.npz`` and checkpoints to ``config.out_dir``
  (``run_folder``: the folder owns one experiment, every file is replaced atomically), and
  each round to the ``logging.writers`` (TensorBoard event files by default; a writer that
  fails is reported and turned off, the JSONL is unaffected).

  Args:
    config: the experiment.
    resume: continue from the newest checkpoint in ``out_dir`` that restores (damaged ones are
      skipped and reported); the stored config must match (``run_folder.RESUMABLE_FIELDS``).
    overwrite: start afresh in an ``out_dir`` that holds another run, deleting its run files.
    progress: a progress bar on a terminal, else a line per evaluation, on stderr.
    data: the federation, if already built (else built from ``config.data``).
    profile: rounds ``(first, last)`` (1-based, inclusive) traced by ``jax.profiler`` into
      ``out_dir/profile`` (Perfetto format; ``profiling.op_table`` sums it per op); rounds a
      resumed run does not run are not traced.
    hooks: user code after every round (``fedjax_lab.hooks``): a hook may add metrics to the
      round's row or stop the run after it (recorded in ``stopped.json``; ``--resume`` then
      runs nothing more).

  Returns:
    ``RunResult``. Raises ``TrainingDivergedError`` when the loss or the state stops being
    finite (that state is not saved), ``RunInterrupted`` after SIGINT/SIGTERM (the round
    under way completes and is checkpointed first), ``run_folder.RunFolderError`` and
    ``checkpoint.CheckpointError``. Every exit path waits for checkpoints being written.

  Under ``jax.distributed`` (several processes, ``execution.devices`` the global device count)
  every process runs this with the same config; the cohort is split over all processes'
  devices, and only process 0 writes the config, metrics and plot (orbax writes the replicated
  checkpoint from process 0 too)."""
  started = time.perf_counter()
  writer = jax.process_index() == 0
  check_installed(config.logging.writers)
  out_dir = output_folder(config)
  claimed = contextlib.nullcontext()
  if writer:
    claimed = run_folder.claim(out_dir, config.to_dict(), resume=resume, overwrite=overwrite)
  with claimed:
    rows, state = _run_claimed(config, out_dir, resume, progress, data, profile, hooks)
  if writer:
    plot_accuracy(
      rows,
      out_dir / run_folder.PLOT_FILE,
      f"{config.algorithm.name} / {config.model.name} / {config.data.source} "
      f"{config.data.partition}",
    )
  return RunResult(config, rows, state, out_dir, time.perf_counter() - started)


def output_folder(config: ExperimentConfig) -> pathlib.Path:
  """``config.out_dir`` as a path, ``~`` expanded (a quoted ``~/runs`` reaches us unexpanded)."""
  return pathlib.Path(config.out_dir).expanduser()


def _run_claimed(config, out_dir, resume, progress, data, profile=None, hooks=()):
  """``run`` in a claimed ``out_dir``: build, restore, train; returns ``(rows, state)``."""
  writer = jax.process_index() == 0
  recorded = run_folder.read_metrics(out_dir) if resume else []
  if resume:
    run_folder.check_rounds(out_dir, recorded)
    if config.rounds < len(recorded):
      raise run_folder.RunFolderError(
        f"--resume: rounds={config.rounds} is below the {len(recorded)} rounds {out_dir} has "
        "done; rounds may only grow (its config.json is left as it is)"
      )
  experiment = _own_clients(config, build_experiment(config, data))
  init_key, rounds_key = jax.random.split(jax.random.key(config.seed))
  state = experiment.algorithm.init(init_key)
  checkpoint_dir = out_dir / run_folder.CHECKPOINT_DIR
  manager = checkpoint.manager(checkpoint_dir) if config.checkpoint_every or resume else None
  try:
    start_round, rows = 0, []
    if resume:
      state, start_round, skipped = checkpoint.restore(
        manager, state, rounds_key, at_most=len(recorded)
      )
      rows = recorded[:start_round]
      for reason in skipped:
        _report(f"skipped checkpoint of {reason}")
      stopped = recorded_stop(out_dir)
      if stopped is not None and stopped["round"] == start_round:
        _report(
          f"nothing to do: a hook stopped {out_dir} after round {start_round} ({stopped['reason']})"
        )
        return rows, state
      if start_round == config.rounds:
        _report(f"nothing to do: {out_dir} has done its {config.rounds} rounds")
      else:
        _report(f"resuming {out_dir} from round {start_round}")
    if writer and start_round < config.rounds:
      run_folder.write_config(out_dir, config.to_dict())
    rows, state = _train(
      config, experiment, state, rows, start_round, rounds_key, manager, progress, profile, hooks
    )
  finally:
    if manager is not None:
      checkpoint.finish(manager)
  return rows, state


def _own_clients(config: ExperimentConfig, experiment):
  """``experiment`` with each process keeping only its own clients (``FederatedData.shard``)
  when the cohort is split over several processes' devices; as it is otherwise."""
  process, count = jax.process_index(), jax.process_count()
  if count == 1 or config.execution.devices == 1:
    return experiment
  data, train_data = experiment.data.shard(process, count), experiment.train_data
  train_data = data if train_data is experiment.data else train_data.shard(process, count)
  return dataclasses.replace(experiment, data=data, train_data=train_data)


def _train(
  config, experiment, state, rows, start_round, rounds_key, manager, progress, profile=None,
  hooks=(),
):  # fmt: skip
  """The round loop of ``run``: rounds ``start_round + 1 .. config.rounds``, ``profile``'s
  traced, ``hooks`` after each (one may stop the run early); returns ``(rows, state)``."""
  from tqdm.auto import tqdm

  algorithm, train_data = experiment.algorithm, experiment.train_data
  # The state is donated: each round writes the new state into the old one's buffers.
  round_fn = compiled_round(algorithm, experiment.setup.executor, donate=True)
  adapt = local_adaptation(experiment)
  download, upload = client_bytes(config, experiment)
  poisson = config.cohort_sampling == "poisson"
  asynchronous = ALGORITHMS.get(config.algorithm.name).asynchronous
  pad_to = math.lcm(POISSON_PADDING, config.execution.devices)
  mesh = client_mesh(config.execution.devices) if config.execution.devices > 1 else None
  sharding = client_sharding(mesh) if mesh is not None else None
  if mesh is not None:
    state = replicate(state, mesh)
  writer = jax.process_index() == 0
  out_dir = output_folder(config)
  terminal = progress and sys.stderr.isatty()
  bar = tqdm(
    range(start_round, config.rounds),
    initial=start_round,
    total=config.rounds,
    disable=not terminal,
    desc=f"{config.algorithm.name}",
    unit="round",
  )
  clock = rows[-1].get("simulated_seconds", 0.0) if rows else 0.0  # the simulated clock
  tracing = False
  names = config.logging.writers if writer and start_round < config.rounds else ()
  writers = WriterSet(names, out_dir, config.to_dict(), start_round, _report)
  # Whether no client's result has reached the server yet (said at the end: issue 46, 14).
  never_aggregated = start_round == 0 or not any(r.get("bytes_up", 0) for r in rows)
  with _stop_requests() as stop, contextlib.ExitStack() as traces, contextlib.closing(writers):
    for round_index in bar:
      if profile is not None and round_index + 1 == profile[0]:
        jax.profiler.start_trace(str(out_dir / PROFILE_FOLDER), create_perfetto_trace=True)
        traces.callback(lambda: tracing and jax.profiler.stop_trace())
        tracing = True
      tick = time.perf_counter()
      ids = cohort_ids(
        config.seed,
        round_index,
        train_data.num_clients,
        config.systems.sampled(experiment.cohort_size),
        config.cohort_sampling,
      )
      fate = reporting_clients(config, experiment, round_index, ids, download, upload, clock)
      reporting, system = fate.ids, fate.metrics
      if poisson:
        cohort = padded_cohort(train_data, reporting, pad_to, sharding)
      else:  # clients lost to the system stay as empty ones: one shape, no recompilation
        lost = np.setdiff1d(ids, reporting, assume_unique=True)
        ordered = np.concatenate([reporting, lost]).astype(np.int32)
        cohort = train_data.cohort(ordered, sharding=sharding, reporting=len(reporting))
        if asynchronous:  # when each dispatched client's result arrives, in the cohort's order
          seconds = fate.arrival[np.searchsorted(ids, ordered)].astype(np.float32)
          cohort = dataclasses.replace(cohort, seconds=seconds)
        if fate.steps is not None:  # partial work: the lost clients have no steps to take
          steps = np.concatenate([fate.steps, np.zeros(len(lost), np.int32)])
          cohort = dataclasses.replace(cohort, steps=steps)
      step_ratio = computed_step_ratio(experiment.setup, cohort.num_examples)
      round_key = jax.random.fold_in(rounds_key, round_index)
      if mesh is not None:
        cohort, round_key = shard_clients(cohort, mesh), replicate(round_key, mesh)
      round_metrics = {}
      if len(reporting) or poisson or asynchronous:  # else nobody reported: nothing changes
        state, round_metrics = round_fn(state, cohort, round_key)
        round_metrics = {k: float(v) for k, v in addressable(round_metrics).items()}
      if len(reporting) == 0:  # nobody trained: no loss to report (the weighted mean is 0)
        round_metrics.pop("train_loss", None)
      if round_metrics.get("server_steps", 1) > 0 and len(reporting):
        never_aggregated = False
      train_loss = round_metrics.get("train_loss", 0.0)
      _check_finite(config, manager, round_index, train_loss, state)
      round_metrics.update(_privacy_spent(config, experiment, round_index + 1))
      if asynchronous:  # the method keeps the clock: results arrive across rounds
        clock = round_metrics["simulated_seconds"]
      elif config.systems.timed:
        clock += system["round_simulated_seconds"]
        system["simulated_seconds"] = clock
      row = {
        "round": round_index + 1,
        "computed_step_ratio": step_ratio,
        **round_metrics,
        **({"cohort_clients": len(ids)} if poisson else {}),
        "bytes_down": download * system.pop("clients_reached", len(ids)),
        "bytes_up": upload * len(reporting),
        **system,
        "round_seconds": time.perf_counter() - tick,
      }
      clients = {}
      if (round_index + 1) % config.eval_every == 0 or round_index + 1 == config.rounds:
        evaluation = evaluate(
          config, experiment.model, algorithm, addressable(state), experiment.data, adapt
        )
        row.update(evaluation.metrics)
        clients = evaluation.clients
        _show(bar, row, config.rounds, train_loss, lines=progress and not terminal)
      rows.append(row)
      event = RoundEnd(round_index + 1, row, rows, state, algorithm, config, out_dir)
      stopped_by = round_end(hooks, event)  # every process: they stop together
      if tracing and round_index + 1 == profile[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        tracing = False
      if writer:
        run_folder.write_metrics(out_dir, rows)
        if clients:
          run_folder.write_client_accuracy(out_dir, round_index + 1, clients)
        writers.write(row, {k: v for k, v in clients.items() if k != "client_ids"})
      if stopped_by:
        _stop_early(config, manager, round_index + 1, state, rounds_key, stopped_by)
        break
      _checkpoint_or_stop(config, manager, round_index + 1, state, rounds_key, stop)
  if rows and start_round < len(rows):
    run_end(hooks, RoundEnd(len(rows), rows[-1], rows, state, algorithm, config, out_dir))
  if never_aggregated and start_round < config.rounds:
    _report(
      f"no client's result reached the server in {config.rounds} rounds ({_losses(rows)}): "
      "the model is the one it started with"
    )
  return rows, state


def _losses(rows: list[dict]) -> str:
  """``"40 sampled clients lost: 12 unavailable, 28 dropped"``, the system's losses in ``rows``."""
  kinds = ("unavailable", "dropped", "late", "surplus")
  counts = {kind: sum(int(r.get(f"clients_{kind}", 0)) for r in rows) for kind in kinds}
  lost = ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)
  return f"{sum(counts.values())} sampled clients lost: {lost}" if lost else "no client reported"


def client_bytes(config, experiment) -> tuple[int, int]:
  """``(download, upload)``: the bytes one participating client receives and sends a round:
  the method's payloads (``payload_bytes``), the upload as ``compression`` encodes it, plus
  the aggregation protocol's own messages (secure aggregation's)."""
  algorithm, setup = experiment.algorithm, experiment.setup
  download, upload = payload_bytes(algorithm, setup)
  if config.compression.name != "none":
    shape = setup.params_shape if algorithm.upload is None else algorithm.upload
    upload = config.compression.options.encoded_bytes(shape)
  if setup.aggregator.upload_overhead is not None:
    upload += setup.aggregator.upload_overhead(experiment.cohort_size)
  return download, upload


def _show(bar, row: dict, rounds: int, train_loss: float, lines: bool) -> None:
  """An evaluated round's accuracies on the progress bar, or as a line on stderr."""
  shown = {k: f"{row[k]:.3f}" for k in ("global_accuracy", "client_accuracy_mean") if k in row}
  bar.set_postfix(shown)
  if lines:
    _report(
      f"round {row['round']}/{rounds} train_loss {train_loss:.4f} "
      + " ".join(f"{k} {v}" for k, v in shown.items())
    )


class Reporting(NamedTuple):
  """What ``reporting_clients`` says of a round's sampled clients: the ``ids`` whose results
  reach the server, the round's system ``metrics``, ``arrival`` (with timed devices, the
  seconds until the server learns each sampled client's fate, in the order of the sampled
  ids; else None) and ``steps`` (with partial work, the local steps each reporting client
  takes, in the order of ``ids``; else None)."""

  ids: np.ndarray
  metrics: dict
  arrival: np.ndarray | None = None
  steps: np.ndarray | None = None


def reporting_clients(
  config, experiment, round_index: int, ids, download: int, upload: int, clock: float = 0.0
) -> Reporting:
  """The sampled ``ids``' fate this round on the configured system (all report on the
  default, ideal one). Metrics: the clients lost (``clients_unavailable``, ``_dropped``,
  ``_late``; ``_surplus`` with over-selection, ``_partial`` with partial work),
  ``clients_reached`` (those that received the model) and, for a synchronous method,
  ``round_simulated_seconds`` (``ops.systems``; each client moves ``download`` and
  ``upload`` bytes and processes its local steps' examples; the round starts ``clock``
  simulated seconds in)."""
  systems = config.systems
  if not (systems.timed or systems.loses_clients):
    return Reporting(ids, {})
  schedule = experiment.setup.schedule
  counts = experiment.train_data.train.num_examples[ids]
  steps = np.asarray(schedule.client_steps(counts))
  keep = experiment.cohort_size if systems.over_selection > 0 else None
  partial = systems.stragglers == "partial"
  outcome = round_outcome(
    config.seed,
    round_index,
    ids,
    steps * schedule.batch_size,
    download,
    upload,
    systems.device_model(),
    keep,
    hour=clock / 3600,
    step_examples=schedule.batch_size if partial else 0,
  )
  metrics = {
    "clients_reached": int(outcome.available.sum()),
    "clients_unavailable": int((~outcome.available).sum()),
    "clients_dropped": int(outcome.dropped.sum()),
    "clients_late": int(outcome.late.sum()),
  }
  if keep is not None:
    metrics["clients_surplus"] = int(outcome.surplus.sum())
  reporting = Reporting(ids[outcome.counted], metrics)
  if partial:
    metrics["clients_partial"] = int(outcome.partial.sum())
    done = np.where(outcome.partial, outcome.steps_done, steps)
    reporting = reporting._replace(steps=done[outcome.counted].astype(np.int32))
  if systems.timed:
    reporting = reporting._replace(arrival=outcome.arrival_seconds(systems.deadline_s))
    if not ALGORITHMS.get(config.algorithm.name).asynchronous:
      metrics["round_simulated_seconds"] = outcome.round_seconds
  return reporting


def _check_finite(config, manager, round_index: int, train_loss: float, state) -> None:
  """``TrainingDivergedError`` naming the round, the last good checkpoint and the step sizes
  when the loss or any inexact leaf of the state is not finite (that state is never saved)."""
  if math.isfinite(train_loss) and bool(addressable(_all_finite(state))):
    return
  last = max(manager.all_steps(), default=None) if manager else None
  if math.isfinite(train_loss):
    what = "the state holds NaN or infinite values"
  else:
    what = f"training loss is {train_loss}"
  kept = f"last good checkpoint: round {last}" if last else "no checkpoint was written yet"
  raise TrainingDivergedError(
    f"round {round_index + 1}: {what}; stopped without saving this state ({kept}). "
    f"{_divergence_hint(config).capitalize()}"
  )


def _privacy_spent(config, experiment, rounds: int) -> dict:
  """The privacy metrics after ``rounds`` rounds: ``local_privacy_epsilon`` (one client in
  every round, no amplification) under local DP; the method's own (``Algorithm.privacy``) or
  ``privacy_epsilon`` of central DP for the run's sampling. Empty without noise."""
  privacy, metrics = config.privacy, {}
  if privacy.local_noise_multiplier > 0:
    metrics["local_privacy_epsilon"] = accounting.epsilon(
      rounds, 1, 1, privacy.local_noise_multiplier, privacy.delta
    )
  if experiment.algorithm.privacy is not None:
    metrics.update(experiment.algorithm.privacy(rounds))
  elif privacy.noise_multiplier > 0:
    metrics["privacy_epsilon"] = accounting.epsilon(
      rounds,
      experiment.cohort_size,
      experiment.train_data.num_clients,
      privacy.noise_multiplier,
      privacy.delta,
      privacy.accountant,
      config.cohort_sampling,
    )
  return metrics


def _stop_early(config, manager, rounds_done: int, state, rounds_key, reason: str) -> None:
  """A hook stopped the run after ``rounds_done`` rounds: checkpoint that round (unless
  checkpoints are off or it was just saved), record the stop, say so."""
  if config.checkpoint_every and rounds_done % config.checkpoint_every:
    checkpoint.save(manager, rounds_done, state, rounds_key)
  if jax.process_index() == 0:
    record_stop(output_folder(config), rounds_done, reason)
  _report(f"a hook stopped the run after round {rounds_done} of {config.rounds}: {reason}")


def _checkpoint_or_stop(config, manager, rounds_done: int, state, rounds_key, stop) -> None:
  """Checkpoint every ``checkpoint_every`` rounds, after the last round (a finished run can be
  extended with a larger ``rounds``) and when a signal asked the run to stop; then, on such a
  signal, ``RunInterrupted`` with the command that continues the run (or starts it over)."""
  last_round = rounds_done == config.rounds
  due = rounds_done % config.checkpoint_every == 0 if config.checkpoint_every else False
  if config.checkpoint_every and (due or last_round or stop):
    checkpoint.save(manager, rounds_done, state, rounds_key)
  if not stop or last_round:
    return
  stopped = f"{stop[0]}: stopped after round {rounds_done} of {config.rounds}"
  stored = ["--config", str(output_folder(config) / run_folder.CONFIG_FILE)]
  if config.checkpoint_every:
    raise RunInterrupted(f"{stopped}, checkpoint saved; continue with", stored + ["--resume"])
  raise RunInterrupted(
    f"{stopped}, no checkpoint (checkpoint_every=0), so it cannot be resumed; start it over with",
    stored + ["--overwrite"],
  )
