"""Metric writers (``fedjax_lab.writers``): every run leaves TensorBoard event files that
TensorBoard's own reader reads back (scalars per round, the per-client accuracy histogram at
each evaluation), MLflow and W&B record the same rows offline, a resumed run continues them,
and a writer that fails or is missing never costs ``metrics.jsonl`` a row."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedjax_lab import run_folder
from fedjax_lab.cli import main
from fedjax_lab.writers import WRITERS, WriterEntry, event_files, scalars

TINY = [
  "--no-progress",
  "data.source=digits",
  "data.num_clients=6",
  "cohort_size=3",
  "rounds=4",
  "eval_every=2",
  "checkpoint_every=2",
]


def tensorboard_run(folder) -> EventAccumulator:
  events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
  events.Reload()
  return events


def test_scalars_are_the_rows_finite_numbers_but_the_round():
  row = {"round": 3, "train_loss": 0.5, "bytes_up": 12, "diverged": True, "x": float("nan")}
  assert scalars(row) == {"train_loss": 0.5, "bytes_up": 12.0}


def test_histogram_counts_every_finite_value_once():
  values = np.array([0.1, 0.2, 0.2, 0.9, np.nan])
  proto = event_files.histogram(values, bins=4)
  assert proto.num == 4 and sum(proto.bucket) == 4
  assert proto.min == pytest.approx(0.1) and proto.max == pytest.approx(0.9)
  assert proto.sum == pytest.approx(1.4) and proto.sum_squares == pytest.approx(0.9)
  assert list(proto.bucket) == [3, 0, 0, 1] and proto.bucket_limit[-1] == pytest.approx(0.9)


def test_a_resumed_writer_replaces_the_rounds_after_its_checkpoint(tmp_path):
  first = event_files.open_writer(tmp_path, {}, 0)
  for step in (1, 2, 3, 4):
    first.write({"round": step, "train_loss": float(step)}, {})
  first.close()  # interrupted after round 4, its last checkpoint at round 2
  resumed = event_files.open_writer(tmp_path, {}, 2)
  for step in (3, 4, 5):
    resumed.write({"round": step, "train_loss": 10.0 * step}, {})
  resumed.close()
  losses = [
    (e.step, e.value) for e in tensorboard_run(tmp_path / "tensorboard").Scalars("train_loss")
  ]
  assert losses == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]


def wandb_history(path) -> list[dict]:
  """The history rows of a W&B ``.wandb`` file: a 7-byte header (``:W&B``, magic, version),
  then LevelDB log records (32 KiB blocks; each record: CRC, length, type 1 full / 2 first /
  3 middle / 4 last) holding ``wandb_internal_pb2.Record`` messages."""
  import json

  from wandb.proto import wandb_internal_pb2

  data, block, rows, pending = path.read_bytes(), 32768, [], b""
  assert data[:4] == b":W&B"
  position = 7
  while position + 7 <= len(data):
    if block - position % block < 7:  # a block's tail too short for a header is padding
      position += block - position % block
      continue
    _, length, kind = struct.unpack("<IHB", data[position : position + 7])
    pending += data[position + 7 : position + 7 + length]
    position += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      pending = b""
      if record.WhichOneof("record_type") == "history":
        items = record.history.item
        rows.append(
          {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
        )
  return rows


@pytest.mark.slow
def test_every_writer_records_the_run_and_its_resumption(tmp_path, capsys):
  out = tmp_path / "run"
  writers = "logging.writers=[tensorboard,mlflow,wandb]"
  assert main([*TINY, writers, f"out_dir={out}"]) == 0
  assert main([*TINY, writers, "--config", str(out / "config.json"), "--resume", "rounds=6"]) == 0
  capsys.readouterr()
  rows = run_folder.read_metrics(out)
  assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
  evaluated = [r for r in rows if "client_accuracy_mean" in r]

  # TensorBoard: every round's loss, every evaluation's accuracy and per-client histogram.
  events = tensorboard_run(out / "tensorboard")
  loss = [(e.step, e.value) for e in events.Scalars("train_loss")]
  assert loss == [(r["round"], pytest.approx(r["train_loss"])) for r in rows]
  accuracy = [(e.step, e.value) for e in events.Scalars("global_accuracy")]
  assert accuracy == [(r["round"], pytest.approx(r["global_accuracy"])) for r in evaluated]
  histograms = events.Histograms("client_accuracy")
  assert [h.step for h in histograms] == [r["round"] for r in evaluated]
  stored = run_folder.read_client_accuracy(out)
  assert int(stored["round"]) == 6 and len(stored["client_ids"]) == 6
  last = histograms[-1].histogram_value
  assert last.num == 6 and last.sum == pytest.approx(stored["client_accuracy"].sum())
  assert np.nanmean(stored["client_accuracy"]) == pytest.approx(
    evaluated[-1]["client_accuracy_mean"]
  )

  # MLflow: one run, continued on resume, with the config as parameters.
  from mlflow.tracking import MlflowClient

  client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
  run_id = (out / "mlflow" / "run_id").read_text()
  history = client.get_metric_history(run_id, "train_loss")
  assert sorted((m.step, m.value) for m in history) == [
    (r["round"], pytest.approx(r["train_loss"])) for r in rows
  ]
  run = client.get_run(run_id)
  assert run.data.params["algorithm.name"] == "fedavg" and run.info.status == "FINISHED"

  # W&B (offline): the same run id in both sessions, every round logged at its step.
  sessions = sorted((out / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
  assert len(sessions) == 2 and len({path.name for path in sessions}) == 1
  logged = [row for path in sessions for row in wandb_history(path)]
  assert [row["_step"] for row in logged] == [1, 2, 3, 4, 5, 6]
  assert [row["train_loss"] for row in logged] == pytest.approx([r["train_loss"] for r in rows])
  assert logged[-1]["client_accuracy/_type"] == "histogram"
  assert sum(logged[-1]["client_accuracy/values"]) == 6


class _FailingWriter:
  def write(self, row, distributions):
    if row["round"] == 2:
      raise OSError(28, "No space left on device")

  def close(self):
    pass


@pytest.fixture
def failing_writer():
  WRITERS.register("failing", WriterEntry(lambda out_dir, config, start: _FailingWriter(), "x"))
  WRITERS.register("absent", WriterEntry(event_files.open_writer, "y", "no_such_package_xyz", "z"))
  yield
  WRITERS.unregister("failing")
  WRITERS.unregister("absent")


@pytest.mark.slow
def test_a_failing_writer_is_one_line_and_the_jsonl_keeps_every_row(
  tmp_path, capsys, failing_writer
):
  out = tmp_path / "run"
  assert main([*TINY, "logging.writers=[failing,tensorboard]", f"out_dir={out}"]) == 0
  err = capsys.readouterr().err
  assert err.count("writer failing failed (OSError: [Errno 28] No space left on device)") == 1
  assert [r["round"] for r in run_folder.read_metrics(out)] == [1, 2, 3, 4]
  assert len(tensorboard_run(out / "tensorboard").Scalars("train_loss")) == 4


def test_a_missing_writer_package_is_one_line_before_anything_runs(
  tmp_path, capsys, failing_writer
):
  out = tmp_path / "run"
  assert main([*TINY, "logging.writers=[absent]", f"out_dir={out}"]) == 2
  err = capsys.readouterr().err.strip()
  assert err == (
    "fedjax-lab: ValueError: logging.writers='absent' needs the no_such_package_xyz package: "
    "pip install 'fedjax_lab[z]' (or drop 'absent' from logging.writers)"
  )
  assert not out.exists()


def test_an_unreachable_tracking_server_turns_the_writer_off_within_seconds(tmp_path, monkeypatch):
  # Issue 46, finding 15: MLflow's own retries stalled a run 245 s before one line.
  import socket
  import time

  from fedjax_lab.writers import WriterSet

  with socket.socket() as probe:  # a port nothing listens on
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
  reports = []
  started = time.monotonic()
  writers = WriterSet(["mlflow"], tmp_path, {"a": 1}, 0, reports.append)
  assert time.monotonic() - started < 15 and writers.names == ()
  assert (
    len(reports) == 1 and "writer mlflow failed (ConnectionError: MLFLOW_TRACKING_URI" in reports[0]
  )
  assert "is unreachable" in reports[0]
