"""One round of a run on the host, before any hook sees it: sample the cohort (fixed or
Poisson), let the configured system decide which clients report (``ops.systems``), pad and
shard the cohort, call the compiled round, and build the round's metrics row.

``RoundStep(config, experiment, rows).run(state, round_index, rounds_key) -> (state,
RoundEnd)``: a pure function of (seed, round) apart from the simulated clock it carries, which
resumes from the last row. Accounting, evaluation and writing are hooks (``run_hooks``)."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import numpy as np

from fedjax_lab.algorithms import ALGORITHMS, compiled_round, payload_bytes
from fedjax_lab.data import Cohort, FederatedData
from fedjax_lab.engine.execution import computed_steps
from fedjax_lab.engine.sharding import (
  addressable,
  client_mesh,
  client_sharding,
  replicate,
  shard_clients,
)
from fedjax_lab.hooks import RoundEnd
from fedjax_lab.ops.systems import round_outcome

# Poisson cohorts are padded with empty clients to a multiple of this: few shapes to compile
POISSON_PADDING = 8


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


def computed_step_ratio(setup, num_examples) -> float:
  """Local steps computed (padding included) over the steps the cohort's clients really take:
  1.0 means no step was wasted (``engine.execution.computed_steps``)."""
  steps = np.asarray(setup.schedule.client_steps(np.asarray(num_examples)))
  unrolled = setup.schedule.max_steps if setup.unroll else None
  return computed_steps(setup.executor, steps, unrolled) / max(int(steps.sum()), 1)


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


def client_bytes(config, experiment) -> tuple[int, int]:
  """``(download, upload)``: the bytes one participating client receives and sends a round:
  the method's payloads (``algorithms.payload_bytes``), the upload as ``compression`` encodes
  it, plus the aggregation protocol's own messages (secure aggregation's)."""
  algorithm, setup = experiment.algorithm, experiment.setup
  download, upload = payload_bytes(algorithm, setup)
  if config.compression.name != "none":
    shape = setup.params_shape if algorithm.upload is None else algorithm.upload
    upload = config.compression.options.encoded_bytes(shape)
  if setup.aggregator.upload_overhead is not None:
    upload += setup.aggregator.upload_overhead(experiment.cohort_size)
  return download, upload


class RoundStep:
  """The host's part of each round (module docstring), set up once for a run whose earlier
  ``rows`` are done. ``mesh``: the device mesh the cohort is split over (None on one
  device); the caller replicates the state onto it."""

  def __init__(self, config, experiment, rows: list[dict]):
    self.config, self.experiment = config, experiment
    # The state is donated: each round writes the new state into the old one's buffers.
    self.round_fn = compiled_round(experiment.algorithm, experiment.setup.executor, donate=True)
    self.download, self.upload = client_bytes(config, experiment)
    self.poisson = config.cohort_sampling == "poisson"
    self.asynchronous = ALGORITHMS.get(config.algorithm.name).asynchronous
    self.pad_to = math.lcm(POISSON_PADDING, config.execution.devices)
    devices = config.execution.devices
    self.mesh = client_mesh(devices) if devices > 1 else None
    self.sharding = client_sharding(self.mesh) if self.mesh is not None else None
    self.clock = rows[-1].get("simulated_seconds", 0.0) if rows else 0.0  # simulated seconds

  def cohort(self, round_index: int, ids: np.ndarray, fate: Reporting) -> Cohort:
    """The cohort the compiled round trains: the reporting clients, Poisson-padded, or with
    the lost ones kept as empty clients (one shape, no recompilation), arrival times for an
    asynchronous method and each client's steps under partial work."""
    train_data, reporting = self.experiment.train_data, fate.ids
    if self.poisson:
      return padded_cohort(train_data, reporting, self.pad_to, self.sharding)
    lost = np.setdiff1d(ids, reporting, assume_unique=True)
    ordered = np.concatenate([reporting, lost]).astype(np.int32)
    cohort = train_data.cohort(ordered, sharding=self.sharding, reporting=len(reporting))
    if self.asynchronous:  # when each dispatched client's result arrives, in the cohort's order
      seconds = fate.arrival[np.searchsorted(ids, ordered)].astype(np.float32)
      cohort = dataclasses.replace(cohort, seconds=seconds)
    if fate.steps is not None:  # partial work: the lost clients have no steps to take
      steps = np.concatenate([fate.steps, np.zeros(len(lost), np.int32)])
      cohort = dataclasses.replace(cohort, steps=steps)
    return cohort

  def run(self, state, round_index: int, rounds_key, rows: list, out_dir):
    """Round ``round_index + 1``: returns ``(state, RoundEnd)``, whose row holds the round's
    number, ``computed_step_ratio``, the method's metrics, the system's (and
    ``cohort_clients`` when Poisson-sampled) and ``round_seconds``."""
    config, experiment = self.config, self.experiment
    tick = time.perf_counter()
    sampled = config.systems.sampled(experiment.cohort_size)
    ids = cohort_ids(
      config.seed, round_index, experiment.train_data.num_clients, sampled, config.cohort_sampling
    )
    fate = reporting_clients(
      config, experiment, round_index, ids, self.download, self.upload, self.clock
    )
    cohort = self.cohort(round_index, ids, fate)
    step_ratio = computed_step_ratio(experiment.setup, cohort.num_examples)
    round_key = jax.random.fold_in(rounds_key, round_index)
    if self.mesh is not None:
      cohort, round_key = shard_clients(cohort, self.mesh), replicate(round_key, self.mesh)
    metrics, system = {}, dict(fate.metrics)
    if len(fate.ids) or self.poisson or self.asynchronous:  # else nothing changes
      state, metrics = self.round_fn(state, cohort, round_key)
      metrics = {k: float(v) for k, v in addressable(metrics).items()}
    if len(fate.ids) == 0:  # nobody trained: no loss to report (the weighted mean is 0)
      metrics.pop("train_loss", None)
    if self.asynchronous:  # the method keeps the clock: results arrive across rounds
      self.clock = metrics["simulated_seconds"]
    elif config.systems.timed:
      self.clock += system["round_simulated_seconds"]
      system["simulated_seconds"] = self.clock
    reached = system.pop("clients_reached", len(ids))
    row = {
      "round": round_index + 1,
      "computed_step_ratio": step_ratio,
      **metrics,
      **({"cohort_clients": len(ids)} if self.poisson else {}),
      "bytes_down": self.download * reached,
      "bytes_up": self.upload * len(fate.ids),
      **system,
      "round_seconds": time.perf_counter() - tick,
    }
    rows.append(row)
    algorithm = experiment.algorithm
    done = round_index + 1
    return state, RoundEnd(
      done, row, rows, state, algorithm, config, out_dir, reported=len(fate.ids)
    )
