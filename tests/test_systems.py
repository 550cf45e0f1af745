"""Devices and the simulated clock (``ops/systems.py``): each client's device is a pure
function of (seed, client); a round's availability, dropouts and deadline follow their
definitions; clients lost to the system contribute nothing, through the runner, for the
methods allowed, and the others are refused in one line."""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np
import pytest

from fedjax_lab import load_config
from fedjax_lab.ops.systems import DeviceModel, device_speeds, round_outcome

TIMED = DeviceModel(compute_median=50.0, uplink_median=1e5, downlink_median=1e6)


def test_a_device_depends_only_on_the_seed_and_its_client():
  alone = device_speeds(3, [7], TIMED)
  among = device_speeds(3, [1, 7, 900_000], TIMED)
  np.testing.assert_array_equal(alone[0], among[1])
  assert not np.array_equal(device_speeds(4, [7], TIMED), alone)
  speeds = device_speeds(0, np.arange(20_000), TIMED)
  np.testing.assert_allclose(np.median(speeds, 0), [50.0, 1e5, 1e6], rtol=0.05)
  assert np.isinf(device_speeds(0, [1, 2], DeviceModel())).all()  # medians 0: instant


def test_a_clients_time_is_download_compute_upload():
  speed, up, down = device_speeds(0, [5], TIMED)[0]
  outcome = round_outcome(0, 0, [5], [120], 4e6, 2e5, TIMED)
  assert outcome.seconds[0] == pytest.approx(4e6 / down + 120 / speed + 2e5 / up)
  assert outcome.round_seconds == pytest.approx(outcome.seconds[0])
  instant = round_outcome(0, 0, [5, 6], [120, 3], 4e6, 2e5, DeviceModel())
  assert instant.round_seconds == 0 and instant.counted.all()


def test_partial_work_is_the_steps_a_straggler_finishes_by_the_deadline():
  """A client past the deadline sends floor((T - transfers) s_k / B) steps and finishes at T;
  one that cannot finish a step stays late; on-time clients do all their work."""
  ids, examples = np.arange(400), np.full(400, 320)  # 10 steps of 32
  model = DeviceModel(compute_median=50.0, uplink_median=1e5, downlink_median=1e6, deadline=4.0)
  dropped = round_outcome(0, 0, ids, examples, 1e5, 1e5, model)
  outcome = round_outcome(0, 0, ids, examples, 1e5, 1e5, model, step_examples=32)
  speed, up, down = device_speeds(0, ids, model).T
  budget = 4.0 - 1e5 / down - 1e5 / up
  steps = np.floor(np.maximum(budget, 0) * speed / 32)
  was_late = dropped.late
  assert outcome.partial.sum() > 20 and outcome.late.sum() > 5  # both kinds occur
  np.testing.assert_array_equal(outcome.partial, was_late & (steps >= 1))
  np.testing.assert_array_equal(outcome.late, was_late & (steps < 1))
  np.testing.assert_array_equal(outcome.steps_done[outcome.partial], steps[outcome.partial])
  assert (outcome.steps_done[outcome.partial] < 10).all()
  np.testing.assert_array_equal(outcome.steps_done[~was_late], -1)
  np.testing.assert_allclose(outcome.seconds[outcome.partial], 4.0)
  assert outcome.round_seconds == 4.0


def test_availability_dropout_and_deadline_follow_their_definitions():
  ids, examples = np.arange(4000), np.full(4000, 100)
  model = DeviceModel(compute_median=50.0, availability=0.7, dropout=0.2, deadline=3.0)
  outcome = round_outcome(1, 2, ids, examples, 0, 0, model)
  assert abs(outcome.available.mean() - 0.7) < 0.03
  assert not (outcome.dropped & ~outcome.available).any()
  assert abs(outcome.dropped.sum() / outcome.available.sum() - 0.2) < 0.03
  on_time = outcome.available & ~outcome.dropped
  np.testing.assert_array_equal(outcome.late, on_time & (outcome.seconds > 3.0))
  assert outcome.late.any() and outcome.round_seconds == 3.0  # waited until the deadline
  again = round_outcome(1, 2, ids[::-1], examples, 0, 0, model)  # order does not matter
  np.testing.assert_array_equal(again.counted[::-1], outcome.counted)
  assert not np.array_equal(
    round_outcome(1, 3, ids, examples, 0, 0, model).counted, outcome.counted
  )


@pytest.mark.parametrize(
  "overrides,message",
  [
    (["algorithm.name=fedmr", "systems.dropout=0.1"], "algorithm.name must be a method that can"),
    (["aggregation.rule=median", "systems.availability=0.5"], "aggregation.rule must be mean"),
    (
      ["privacy.noise_multiplier=1", "aggregation.clip_norm=1", "algorithm.weighting=uniform",
       "systems.dropout=0.1"],
      "privacy.noise_multiplier must be 0 when systems lose clients",
    ),
    (["systems.deadline_s=5"], "systems.deadline_s must be 0 unless systems.compute_median > 0"),
    (["systems.dropout=1"], "systems.dropout must be in [0, 1)"),
    (["systems.stragglers=partial"], "systems.stragglers must be drop unless systems.deadline_s"),
    (["systems.stragglers=late"], "systems.stragglers must be one of"),
    (["algorithm.name=scaffold", "systems.compute_median=9", "systems.deadline_s=5",
      "systems.stragglers=partial"], "systems.stragglers must be drop for algorithm.name=scaffold"),
    (["systems.availability=0"], "systems.availability must be in (0, 1]"),
  ],
)  # fmt: skip
def test_settings_a_method_cannot_honour_are_refused_in_one_line(overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    load_config(None, ["data.num_clients=10", *overrides])


BASE = [
  "data.source=digits",
  "data.num_clients=10",
  "data.dirichlet.min_examples=10",
  "cohort_size=5",
  "eval_every=2",
  "checkpoint_every=2",
  "local.batch_size=16",
]


@pytest.mark.slow
def test_lost_clients_contribute_nothing_and_the_clock_runs_on(tmp_path):
  from fedjax_lab.algorithms import payload_bytes
  from fedjax_lab.build import build_experiment
  from fedjax_lab.round_step import cohort_ids, reporting_clients
  from fedjax_lab.runner import run

  settings = [
    *BASE,
    "rounds=4",
    "systems.compute_median=20",
    "systems.uplink_mbps=1",
    "systems.downlink_mbps=10",
    "systems.dropout=0.3",
    "systems.deadline_s=3",
    f"out_dir={tmp_path / 'a'}",
  ]
  config = load_config(None, settings)
  rows = run(config, progress=False).metrics
  experiment = build_experiment(config)
  download, upload = payload_bytes(experiment.algorithm, experiment.setup)
  lost = 0
  for row in rows:
    ids = cohort_ids(config.seed, row["round"] - 1, 10, 5)
    reporting = reporting_clients(config, experiment, row["round"] - 1, ids, download, upload).ids
    assert row["clients_dropped"] + row["clients_late"] + len(reporting) == 5
    assert row["bytes_up"] == len(reporting) * upload and row["bytes_down"] == 5 * download
    lost += 5 - len(reporting)
  assert lost > 0
  clock = np.cumsum([r["round_simulated_seconds"] for r in rows])
  np.testing.assert_allclose([r["simulated_seconds"] for r in rows], clock)
  assert all(r["round_simulated_seconds"] <= 3.0 for r in rows)
  # Resumed, the clock goes on from the recorded time.
  more = run(load_config(None, [*settings[:-1], "rounds=6", f"out_dir={tmp_path / 'a'}"]),
             resume=True, progress=False).metrics  # fmt: skip
  assert more[4]["simulated_seconds"] == pytest.approx(
    clock[-1] + more[4]["round_simulated_seconds"]
  )


@pytest.mark.slow
def test_a_round_nobody_reports_leaves_the_model_as_it_was(tmp_path):
  from fedjax_lab.build import build_experiment
  from fedjax_lab.runner import run

  config = load_config(
    None, [*BASE, "rounds=2", "systems.availability=0.0001", f"out_dir={tmp_path}"]
  )
  result = run(config, progress=False)
  assert [r["clients_unavailable"] for r in result.metrics] == [5, 5]
  assert all("train_loss" not in r and r["bytes_up"] == 0 for r in result.metrics)
  initial = build_experiment(config).algorithm.init(jax.random.split(jax.random.key(0))[0])
  jax.tree.map(np.testing.assert_array_equal, result.state.params, initial.params)


@pytest.mark.slow
def test_timing_alone_changes_no_number_and_a_deadline_shortens_simulated_time(tmp_path):
  from fedjax_lab.runner import run

  runs = {
    name: run(
      load_config(None, [*BASE, "rounds=4", *extra, f"out_dir={tmp_path / name}"]),
      progress=False,
    ).metrics
    for name, extra in {
      "ideal": [],
      "timed": ["systems.compute_median=20", "systems.uplink_mbps=1"],
      "deadline": ["systems.compute_median=20", "systems.uplink_mbps=1", "systems.deadline_s=2"],
    }.items()
  }
  system = {"simulated_seconds", "round_simulated_seconds", "round_seconds"}
  system |= {"clients_unavailable", "clients_dropped", "clients_late"}
  plain = lambda rows: [{k: v for k, v in r.items() if k not in system} for r in rows]
  assert plain(runs["timed"]) == plain(runs["ideal"])  # same training, now on a clock
  slowest = max(r["round_simulated_seconds"] for r in runs["timed"])
  assert slowest > 2.0 and sum(r["clients_late"] for r in runs["deadline"]) > 0
  assert runs["deadline"][-1]["simulated_seconds"] < runs["timed"][-1]["simulated_seconds"]


def test_over_selection_counts_the_first_to_finish():
  ids, examples = np.arange(13), np.full(13, 300)
  model = DeviceModel(compute_median=50.0, dropout=0.1)
  outcome = round_outcome(0, 1, ids, examples, 0, 0, model, keep=10)
  finished = outcome.available & ~outcome.dropped
  assert outcome.counted.sum() == min(10, finished.sum()) and outcome.surplus.any()
  slowest_counted = outcome.seconds[outcome.counted].max()
  assert (outcome.seconds[outcome.surplus] >= slowest_counted).all()
  assert outcome.round_seconds == slowest_counted  # it stopped once it had ten
  with pytest.raises(ValueError, match=re.escape("ceil((1 + over_selection) * cohort_size) = 13")):
    load_config(None, ["data.num_clients=12", "cohort_size=10", "systems.compute_median=5",
                       "systems.over_selection=0.3"])  # fmt: skip
  timed = ["systems.compute_median=5", "systems.over_selection=0.3"]
  config = load_config(None, ["data.num_clients=20", "cohort_size=10", *timed])
  assert config.systems.sampled(config.cohort_size) == 13


def test_an_availability_trace_puts_clients_online_in_their_daily_windows(tmp_path):
  from fedjax_lab.ops.systems import read_trace

  path = tmp_path / "trace.csv"
  path.write_text("client,start_hour,end_hour\n7,8,12\n7,20,22\n9,22,2\n")
  trace = read_trace(str(path))
  # Federation clients 0, 1, 2, 3 follow trace clients 7, 9, 7, 9.
  online = lambda hour: list(trace.online([0, 1, 2, 3], hour))
  assert online(9.5) == [True, False, True, False]
  assert online(21) == [True, False, True, False]
  assert online(23) == online(1.5) == [False, True, False, True]  # past midnight
  assert online(12) == [False, False, False, False]  # a window ends where it says
  assert online(24 + 9.5) == online(9.5)  # every day
  model = DeviceModel(compute_median=50.0, deadline=5.0, trace=trace)
  outcome = round_outcome(0, 0, [0, 1, 2, 3], [10] * 4, 0, 0, model, hour=23.0)
  assert list(outcome.available) == [False, True, False, True] and outcome.round_seconds == 5.0
  bad = tmp_path / "bad.csv"
  bad.write_text("client,start_hour,end_hour\n1,8,25\n")
  with pytest.raises(ValueError, match="bad.csv:2: hours must be in"):
    read_trace(str(bad))
  with pytest.raises(ValueError, match=re.escape("systems.deadline_s must be > 0 with")):
    load_config(None, ["systems.compute_median=5", f"systems.availability_trace={path}"])


@pytest.mark.slow
def test_the_shipped_diurnal_trace_drives_who_is_online_as_the_clock_runs(tmp_path):
  from fedjax_lab.runner import run

  trace = pathlib.Path(__file__).resolve().parents[1] / "experiments/systems/diurnal_trace.csv"
  settings = [*BASE, "data.num_clients=20", "rounds=12", "systems.compute_median=0.05"]
  settings += [f"systems.availability_trace={trace}", "systems.deadline_s=3600"]
  rows = run(load_config(None, [*settings, f"out_dir={tmp_path}"]), progress=False).metrics
  hours = [0.0] + [r["simulated_seconds"] / 3600 for r in rows[:-1]]
  assert hours[-1] > 10  # the rounds span most of a day
  unavailable = [r["clients_unavailable"] for r in rows]
  assert min(unavailable) < max(unavailable)  # who is online changes with the time of day
  for row in rows:
    assert row["clients_unavailable"] + row["clients_late"] <= 5


@pytest.mark.slow
def test_scaffold_keeps_the_controls_of_clients_it_lost(tmp_path):
  """Lost clients stay in the cohort under their own ids, with no examples: SCAFFOLD leaves
  their control variates as they were and updates the reporting clients' ones."""
  from fedjax_lab.algorithms import payload_bytes
  from fedjax_lab.build import build_experiment
  from fedjax_lab.round_step import cohort_ids, reporting_clients
  from fedjax_lab.runner import run

  settings = [*BASE, "algorithm.name=scaffold", "rounds=1", "systems.dropout=0.5"]
  config = load_config(None, [*settings, f"out_dir={tmp_path}"])
  result = run(config, progress=False)
  experiment = build_experiment(config)
  download, upload = payload_bytes(experiment.algorithm, experiment.setup)
  ids = cohort_ids(config.seed, 0, 10, 5)
  reporting = reporting_clients(config, experiment, 0, ids, download, upload).ids
  lost = np.setdiff1d(ids, reporting)
  assert len(reporting) and len(lost) and result.metrics[0]["clients_dropped"] == len(lost)
  controls = jax.tree.leaves(result.state.client_controls)[0]
  moved = np.abs(np.asarray(controls)).reshape(10, -1).max(1) > 0  # controls start at 0
  assert moved[reporting].all() and not moved[lost].any()
  assert not moved[np.setdiff1d(np.arange(10), ids)].any()


@pytest.mark.slow
def test_stragglers_send_their_partial_work(tmp_path):
  """Under the same tight deadline, partial work counts the stragglers that finished a step
  (they upload, so more bytes go up; a round where everyone was late still hears from some),
  and FedNova's effective steps fall below those of the on-time clients alone."""
  from fedjax_lab.runner import run

  settings = [*BASE, "rounds=3", "algorithm.name=fednova", "systems.compute_median=20",
              "systems.deadline_s=3", "local.epochs=2"]  # fmt: skip
  drop = run(load_config(None, [*settings, f"out_dir={tmp_path / 'd'}"]), progress=False).metrics
  partial_settings = [*settings, "systems.stragglers=partial", f"out_dir={tmp_path / 'p'}"]
  partial = run(load_config(None, partial_settings), progress=False).metrics
  assert sum(r["clients_partial"] for r in partial) > 0
  for d, p in zip(drop, partial):
    assert p["clients_late"] + p["clients_partial"] == d["clients_late"]
    assert p["bytes_up"] > d["bytes_up"] or p["clients_partial"] == 0
  assert all("effective_steps" in r for r in partial)  # every round heard from someone
  both = [(d["effective_steps"], p["effective_steps"]) for d, p in zip(drop, partial)
          if "effective_steps" in d]  # fmt: skip
  assert both and all(p < d for d, p in both)  # the partial clients took fewer steps
