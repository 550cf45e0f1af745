"""The host-side driver: claim the run folder, build the run (``build.py``), restore a
checkpoint, then the round loop: each round a ``RoundStep`` (cohort, system, compiled round)
whose event passes through the hooks, the runner's own (``run_hooks``: evaluation, privacy,
progress, profiling, writing, checkpointing) and the user's (``hooks``)."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import signal
import threading
import time
from collections.abc import Sequence

import jax

from fedjax_lab import checkpoint, run_folder
from fedjax_lab.build import build_experiment
from fedjax_lab.config import ExperimentConfig
from fedjax_lab.data import FederatedData
from fedjax_lab.engine.sharding import replicate
from fedjax_lab.hooks import Hook, recorded_stop, round_end, round_start, run_end
from fedjax_lab.plots import pyplot
from fedjax_lab.round_step import RoundStep
from fedjax_lab.run_hooks import Checkpointing, own_hooks, report
from fedjax_lab.writers import check_installed


@dataclasses.dataclass
class RunResult:
  config: ExperimentConfig
  metrics: list[dict]
  state: object
  out_dir: pathlib.Path
  wall_seconds: float


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
        report(f"skipped checkpoint of {reason}")
      stopped = recorded_stop(out_dir)
      if stopped is not None and stopped["round"] == start_round:
        report(
          f"nothing to do: a hook stopped {out_dir} after round {start_round} ({stopped['reason']})"
        )
        return rows, state
      if start_round == config.rounds:
        report(f"nothing to do: {out_dir} has done its {config.rounds} rounds")
      else:
        report(f"resuming {out_dir} from round {start_round}")
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
  """The round loop of ``run``: rounds ``start_round + 1 .. config.rounds``, each a
  ``RoundStep`` whose event passes through the runner's hooks and the user's ``hooks``
  (``run_hooks``' order), then ``Checkpointing``; returns ``(rows, state)``."""
  out_dir = output_folder(config)
  step = RoundStep(config, experiment, rows)
  if step.mesh is not None:
    state = replicate(state, step.mesh)
  before, after = own_hooks(config, experiment, manager, progress, profile, rows[:], out_dir)
  every_hook = [*before, *hooks, *after]
  checkpoints = Checkpointing(config, manager, rounds_key, out_dir)
  event = None
  with _stop_requests() as signals, contextlib.ExitStack() as closing:
    for hook in every_hook:
      closing.callback(getattr(hook, "close", lambda: None))
    for round_index in range(start_round, config.rounds):
      round_start(every_hook, round_index + 1)
      state, event = step.run(state, round_index, rounds_key, rows, out_dir)
      stopped_by = round_end(every_hook, event)  # every process: they stop together
      if checkpoints.close_round(event, stopped_by, signals):
        break
    if event is not None:
      run_end(every_hook, event)
  return rows, state
