"""TensorBoard event files in ``<run folder>/tensorboard``: each round's numbers as scalars
(tags: the ``metrics.jsonl`` keys, step: the round) and each per-client distribution as a
histogram at its evaluation. ``tensorboard --logdir runs/quickstart`` shows one run;
``--logdir`` on a sweep's folder shows every cell.

Written with TensorBoard's own event-file writer and protocol buffers (no TensorFlow). A
resumed run starts with a ``SessionLog.START`` event at its first new round, so TensorBoard
drops what an interrupted session had logged past its last checkpoint (those rounds are
computed again)."""

from __future__ import annotations

import pathlib
import time

import numpy as np

from fedjax_lab.writers import scalars

FOLDER = "tensorboard"
HISTOGRAM_BINS = 30


def histogram(values: np.ndarray, bins: int = HISTOGRAM_BINS):
  """A ``HistogramProto`` of the finite ``values``: ``bins`` equal buckets over their range
  (bucket ``i`` counts values up to ``bucket_limit[i]``), with min, max, sum, sum of squares."""
  from tensorboard.compat.proto.summary_pb2 import HistogramProto

  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  counts, edges = np.histogram(values, bins=bins)
  return HistogramProto(
    min=float(values.min()) if values.size else 0.0,
    max=float(values.max()) if values.size else 0.0,
    num=float(values.size),
    sum=float(values.sum()),
    sum_squares=float((values**2).sum()),
    bucket_limit=edges[1:].tolist(),
    bucket=counts.astype(np.float64).tolist(),
  )


class EventFileWriter:
  """Scalars and histograms of a run, one event per round."""

  def __init__(self, folder: pathlib.Path, start_round: int):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter as Events

    self._event_pb2 = event_pb2
    self._events = Events(str(folder))
    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    self._events.add_event(
      event_pb2.Event(wall_time=time.time(), step=start_round + 1, session_log=start)
    )

  def write(self, row: dict, distributions: dict[str, np.ndarray]) -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary

    values = [Summary.Value(tag=k, simple_value=v) for k, v in scalars(row).items()]
    values += [Summary.Value(tag=k, histo=histogram(v)) for k, v in distributions.items()]
    event = self._event_pb2.Event(
      wall_time=time.time(), step=row["round"], summary=Summary(value=values)
    )
    self._events.add_event(event)
    self._events.flush()

  def close(self) -> None:
    self._events.close()


def open_writer(out_dir: pathlib.Path, config: dict, start_round: int) -> EventFileWriter:
  """The run's TensorBoard writer (``WriterEntry.open``)."""
  return EventFileWriter(out_dir / FOLDER, start_round)
