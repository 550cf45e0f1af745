"""The runner's own features, written as hooks (``fedjax_lab.hooks``' protocol), in the order
a round's row passes through them:

  DivergenceCheck -> PrivacyAccounting -> Evaluating -> Progress -> Profiler -> (the user's
  hooks) -> RunFolderWriter -> NothingReachedServer, then Checkpointing closes the round.

So a user's hook sees the round's evaluation and privacy spent, may add to the row before it
is written, and a diverged state is never evaluated, written or saved. ``own_hooks`` builds
the lists; each hook reads only the event and what it was built with."""

from __future__ import annotations

import math
import pathlib
import sys

import jax
import jax.numpy as jnp

from fedjax_lab import checkpoint, run_folder
from fedjax_lab.engine.sharding import addressable
from fedjax_lab.evaluation import evaluate, local_adaptation
from fedjax_lab.hooks import Hook, RoundEnd, record_stop
from fedjax_lab.ops import accounting
from fedjax_lab.profiling import PROFILE_FOLDER
from fedjax_lab.writers import WriterSet


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


def report(message: str) -> None:
  """A line on stderr, ``fedjax-lab: `` first."""
  print(f"fedjax-lab: {message}", file=sys.stderr, flush=True)


@jax.jit
def _all_finite(tree) -> jax.Array:
  """Whether every inexact leaf of ``tree`` is finite (integer leaves always are)."""
  leaves = [jnp.isfinite(l).all() for l in jax.tree.leaves(tree) if jnp.issubdtype(l, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class DivergenceCheck(Hook):
  """``TrainingDivergedError`` naming the round, the last good checkpoint and the step sizes to
  lower when the round's loss or any inexact leaf of the state is not finite."""

  def __init__(self, config, manager):
    self.config, self.manager = config, manager

  def on_round_end(self, event: RoundEnd):
    train_loss = event.row.get("train_loss", 0.0)
    if math.isfinite(train_loss) and bool(addressable(_all_finite(event.state))):
      return None
    last = max(self.manager.all_steps(), default=None) if self.manager else None
    if math.isfinite(train_loss):
      what = "the state holds NaN or infinite values"
    else:
      what = f"training loss is {train_loss}"
    kept = f"last good checkpoint: round {last}" if last else "no checkpoint was written yet"
    rates = [f"local.learning_rate (now {self.config.local.learning_rate})"]
    if self.config.algorithm.name in ("fedopt", "scaffold"):  # methods with a server step size
      rates.append(f"server.learning_rate (now {self.config.server.learning_rate})")
    raise TrainingDivergedError(
      f"round {event.round}: {what}; stopped without saving this state ({kept}). "
      f"Lower {' or '.join(rates)}"
    )


def privacy_spent(config, experiment, rounds: int) -> dict:
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


class PrivacyAccounting(Hook):
  """The privacy spent so far (``privacy_spent``) added to every round's row."""

  def __init__(self, config, experiment):
    self.config, self.experiment = config, experiment

  def on_round_end(self, event: RoundEnd):
    event.row.update(privacy_spent(self.config, self.experiment, event.round))


def evaluated(config, round_number: int) -> bool:
  """Whether round ``round_number`` (1-based) ends with an evaluation: every ``eval_every``
  rounds and after the last."""
  return round_number % config.eval_every == 0 or round_number == config.rounds


class Evaluating(Hook):
  """At an evaluated round, ``evaluation.evaluate``'s metrics added to the row and its
  per-client accuracies put in ``event.clients``."""

  def __init__(self, config, experiment):
    self.config, self.experiment = config, experiment
    self.adapt = local_adaptation(experiment)

  def on_round_end(self, event: RoundEnd):
    if not evaluated(self.config, event.round):
      return None
    experiment, state = self.experiment, addressable(event.state)
    result = evaluate(
      self.config, experiment.model, event.algorithm, state, experiment.data, self.adapt
    )
    event.row.update(result.metrics)
    event.clients.update(result.clients)


class Progress(Hook):
  """A progress bar on a terminal (the accuracies of the last evaluation beside it), else,
  when ``progress``, a line on stderr per evaluation."""

  def __init__(self, config, start_round: int, progress: bool):
    from tqdm.auto import tqdm

    self.config, self.terminal = config, progress and sys.stderr.isatty()
    self.lines = progress and not self.terminal
    self.bar = tqdm(
      initial=start_round,
      total=config.rounds,
      disable=not self.terminal,
      desc=config.algorithm.name,
      unit="round",
    )

  def on_round_end(self, event: RoundEnd):
    self.bar.update(1)
    if not evaluated(self.config, event.round):
      return None
    row = event.row
    shown = {k: f"{row[k]:.3f}" for k in ("global_accuracy", "client_accuracy_mean") if k in row}
    self.bar.set_postfix(shown)
    if self.lines:
      loss = row.get("train_loss", 0.0)
      accuracies = " ".join(f"{k} {v}" for k, v in shown.items())
      report(f"round {event.round}/{self.config.rounds} train_loss {loss:.4f} {accuracies}")

  def close(self) -> None:
    self.bar.close()


class Profiler(Hook):
  """``jax.profiler`` traces rounds ``first..last`` (1-based, inclusive) into
  ``out_dir/profile``; a round a resumed run does not run is not traced."""

  def __init__(self, out_dir: pathlib.Path, first: int, last: int):
    self.folder, self.first, self.last, self.tracing = out_dir / PROFILE_FOLDER, first, last, False

  def on_round_start(self, round_number: int) -> None:
    if round_number == self.first:
      jax.profiler.start_trace(str(self.folder), create_perfetto_trace=True)
      self.tracing = True

  def on_round_end(self, event: RoundEnd):
    if self.tracing and event.round == self.last:
      jax.block_until_ready(event.state)
      self.close()

  def close(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False


class RunFolderWriter(Hook):
  """Process 0 writes every row to ``metrics.jsonl``/``.csv``, an evaluation's per-client
  accuracies to ``client_accuracy.npz`` and both to the ``logging.writers``."""

  def __init__(self, config, out_dir: pathlib.Path, start_round: int):
    self.out_dir, self.writer = out_dir, jax.process_index() == 0
    names = config.logging.writers if self.writer else ()
    self.writers = WriterSet(names, out_dir, config.to_dict(), start_round, report)

  def on_round_end(self, event: RoundEnd):
    if not self.writer:
      return None
    run_folder.write_metrics(self.out_dir, event.rows)
    if event.clients:
      run_folder.write_client_accuracy(self.out_dir, event.round, event.clients)
    distributions = {k: v for k, v in event.clients.items() if k != "client_ids"}
    self.writers.write(event.row, distributions)

  def close(self) -> None:
    self.writers.close()


def _losses(rows: list[dict]) -> str:
  """``"40 sampled clients lost: 12 unavailable, 28 dropped"``, the system's losses in ``rows``."""
  kinds = ("unavailable", "dropped", "late", "surplus")
  counts = {kind: sum(int(r.get(f"clients_{kind}", 0)) for r in rows) for kind in kinds}
  lost = ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)
  return f"{sum(counts.values())} sampled clients lost: {lost}" if lost else "no client reported"


class NothingReachedServer(Hook):
  """At the end, a line when no round aggregated any client's result (the model is the one it
  started with), naming the clients the system lost. A round aggregated when a client
  reported and the server stepped; a resumed run's earlier rounds, when they moved any upload
  bytes (``rows``: the rows done before this run started)."""

  def __init__(self, rows: list[dict]):
    self.aggregated = any(r.get("bytes_up", 0) > 0 for r in rows)

  def on_round_end(self, event: RoundEnd):
    if event.reported and event.row.get("server_steps", 1) > 0:
      self.aggregated = True

  def on_run_end(self, event: RoundEnd) -> None:
    if self.aggregated:
      return
    report(
      f"no client's result reached the server in {event.config.rounds} rounds "
      f"({_losses(event.rows)}): the model is the one it started with"
    )


class Checkpointing:
  """Closes each round, after every hook: checkpoints every ``checkpoint_every`` rounds, after
  the last round (a finished run can be extended with a larger ``rounds``), when a hook stopped
  the run (recorded in ``stopped.json``) and when a signal asked it to stop (then
  ``RunInterrupted`` with the command that continues the run, or starts it over)."""

  def __init__(self, config, manager, rounds_key, out_dir: pathlib.Path):
    self.config, self.manager, self.rounds_key, self.out_dir = config, manager, rounds_key, out_dir

  def save(self, rounds_done: int, state) -> None:
    checkpoint.save(self.manager, rounds_done, state, self.rounds_key)

  def close_round(self, event: RoundEnd, stopped_by: str | None, signals: list[str]) -> bool:
    """Whether the run stops here (a hook's ``stopped_by``); raises on a signal."""
    config, done = self.config, event.round
    every = config.checkpoint_every
    if stopped_by:
      if every and done % every:
        self.save(done, event.state)
      if jax.process_index() == 0:
        record_stop(self.out_dir, done, stopped_by)
      report(f"a hook stopped the run after round {done} of {config.rounds}: {stopped_by}")
      return True
    last_round = done == config.rounds
    if every and (done % every == 0 or last_round or signals):
      self.save(done, event.state)
    if not signals or last_round:
      return False
    stopped = f"{signals[0]}: stopped after round {done} of {config.rounds}"
    stored = ["--config", str(self.out_dir / run_folder.CONFIG_FILE)]
    if every:
      raise RunInterrupted(f"{stopped}, checkpoint saved; continue with", stored + ["--resume"])
    raise RunInterrupted(
      f"{stopped}, no checkpoint (checkpoint_every=0), so it cannot be resumed; start it over with",
      stored + ["--overwrite"],
    )


def own_hooks(config, experiment, manager, progress: bool, profile, rows: list, out_dir):
  """``(before, after)``: the runner's hooks that run before the user's and after them (module
  docstring); ``profile``: the rounds ``(first, last)`` to trace, or None; ``rows``: the
  rounds done before this run started."""
  start_round = len(rows)
  before = [
    DivergenceCheck(config, manager),
    PrivacyAccounting(config, experiment),
    Evaluating(config, experiment),
    Progress(config, start_round, progress),
  ]
  if profile is not None:
    before.append(Profiler(out_dir, *profile))
  after = [RunFolderWriter(config, out_dir, start_round), NothingReachedServer(rows)]
  return before, after
