"""An MLflow run per fedjax-lab run: the config as parameters (dotted names), each round's
numbers as metrics (step: the round). Offline by default: the tracking store is an SQLite
file in ``<run folder>/mlflow`` (``mlflow ui --backend-store-uri sqlite:///<run
folder>/mlflow/mlflow.db``); ``MLFLOW_TRACKING_URI`` sends it to a server instead and
``MLFLOW_EXPERIMENT_NAME`` names the experiment (default ``fedjax-lab``). A resumed run
continues its MLflow run (its id is kept in ``mlflow/run_id``). MLflow has no histograms:
per-client distributions are left to TensorBoard and W&B."""

from __future__ import annotations

import os
import pathlib
import socket
import time
import urllib.parse

import numpy as np

from fedjax_lab.tables import dotted_fields
from fedjax_lab.writers import scalars

FOLDER = "mlflow"
BATCH = 100  # MLflow's most parameters in one log_batch call
# A tracking server is given this long to answer (seconds) and retried this often, unless the
# user sets MLflow's own variables: MLflow's defaults (120 s, 7 retries with backoff) stalled a
# run 245 s on an unreachable server before its writer was turned off.
SERVER_TIMEOUT_S, SERVER_RETRIES = 10, 1


def check_reachable(uri: str, timeout: float = SERVER_TIMEOUT_S) -> None:
  """``ConnectionError`` in one line when an ``http(s)://`` tracking server does not accept a
  connection within ``timeout`` seconds (other stores are files: nothing to check)."""
  parsed = urllib.parse.urlparse(uri)
  if parsed.scheme not in ("http", "https"):
    return
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  try:
    socket.create_connection((parsed.hostname, port), timeout=timeout).close()
  except OSError as error:
    raise ConnectionError(f"MLFLOW_TRACKING_URI={uri} is unreachable ({error})") from None


class MlflowWriter:
  def __init__(self, folder: pathlib.Path, config: dict, start_round: int, name: str):
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder.resolve()}/mlflow.db"
    check_reachable(uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(SERVER_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(SERVER_RETRIES))
    self._client = MlflowClient(tracking_uri=uri)
    stored = folder / "run_id"
    if start_round > 0 and stored.exists():
      self.run_id = stored.read_text().strip()
      self._client.update_run(self.run_id, status="RUNNING")
      return
    experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "fedjax-lab")
    experiment = self._client.get_experiment_by_name(experiment_name)
    experiment_id = (
      experiment.experiment_id if experiment else self._client.create_experiment(experiment_name)
    )
    self.run_id = self._client.create_run(experiment_id, run_name=name).info.run_id
    stored.write_text(self.run_id)
    params = [Param(k, str(v)) for k, v in dotted_fields(config).items()]
    for start in range(0, len(params), BATCH):
      self._client.log_batch(self.run_id, params=params[start : start + BATCH])

  def write(self, row: dict, distributions: dict[str, np.ndarray]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, row["round"]) for k, v in scalars(row).items()]
    for start in range(0, len(metrics), BATCH):
      self._client.log_batch(self.run_id, metrics=metrics[start : start + BATCH])

  def close(self) -> None:
    self._client.set_terminated(self.run_id)


def open_writer(out_dir: pathlib.Path, config: dict, start_round: int) -> MlflowWriter:
  """The run's MLflow writer (``WriterEntry.open``), named after its folder."""
  return MlflowWriter(out_dir / FOLDER, config, start_round, out_dir.resolve().name)
