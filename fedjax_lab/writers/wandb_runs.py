"""A Weights & Biases run per fedjax-lab run, offline by default (``WANDB_MODE=online``
uploads as it goes): files in ``<run folder>/wandb``, sent later with ``wandb sync
<run folder>/wandb/offline-run-*``. The config is the run's config; each round's numbers are
logged at step = round and each per-client distribution as a ``wandb.Histogram``.
``WANDB_PROJECT`` names the project (default ``fedjax-lab``). A resumed run continues its W&B
run (its id is kept in ``wandb/run_id``)."""

from __future__ import annotations

import os
import pathlib
import uuid

import numpy as np

from fedjax_lab.writers import scalars

FOLDER = "wandb"


class WandbWriter:
  def __init__(self, folder: pathlib.Path, config: dict, start_round: int, name: str):
    import wandb

    self._wandb = wandb
    folder.mkdir(parents=True, exist_ok=True)
    stored = folder / "run_id"
    resuming = start_round > 0 and stored.exists()
    run_id = stored.read_text().strip() if resuming else uuid.uuid4().hex[:12]
    stored.write_text(run_id)
    self._run = wandb.init(
      dir=str(folder),
      project=os.environ.get("WANDB_PROJECT", "fedjax-lab"),
      name=name,
      id=run_id,
      resume="allow" if resuming else None,
      mode=os.environ.get("WANDB_MODE", "offline"),
      config=config,
      reinit="create_new",
      settings=wandb.Settings(silent=True, console="off"),
    )

  def write(self, row: dict, distributions: dict[str, np.ndarray]) -> None:
    logged = dict(scalars(row))
    for key, values in distributions.items():
      finite = np.asarray(values, np.float64)
      logged[key] = self._wandb.Histogram(finite[np.isfinite(finite)])
    self._run.log(logged, step=row["round"])

  def close(self) -> None:
    self._run.finish()


def open_writer(out_dir: pathlib.Path, config: dict, start_round: int) -> WandbWriter:
  """The run's W&B writer (``WriterEntry.open``), named after its folder."""
  return WandbWriter(out_dir / FOLDER, config, start_round, out_dir.resolve().name)
