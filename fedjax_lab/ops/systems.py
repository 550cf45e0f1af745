"""The clients' devices and a simulated clock: who is available, who drops, who is late, and how
long a round takes (host side, NumPy; a pure function of the seed, the round and the clients).

Each client ``k`` has a device drawn once from ``(seed, k)``: a compute speed ``s_k`` (examples
per second) and up/down link rates ``u_k``, ``d_k`` (bytes per second), each lognormal around
its median (``sigma``: the spread of its log), so a million clients cost nothing until sampled.
In a round, client ``k`` needs

  ``t_k = bytes_down / d_k + examples_k / s_k + bytes_up / u_k``

seconds (``examples_k``: the examples its local steps process). A sampled client is available
with probability ``availability`` and, with an availability ``trace``, only while the
simulated time of day at the round's start lies in one of its windows; once it started, it
drops with probability ``dropout`` (draws from ``(seed, round, k)``); with a ``deadline``
``T > 0``, a client with ``t_k > T`` is late. Over-selection (``keep``, as production
systems do it: sample more clients than needed) counts only the ``keep`` first to finish;
the slower ones are ``surplus``, cancelled once the server has enough. Only available, not
dropped, on-time, not surplus clients are counted: the others contribute nothing (the runner
gives them no examples, aggregation weight 0, as the padding of Poisson cohorts). The round
lasts ``max_k t_k`` over the counted clients; with a deadline, ``T`` whenever fewer results
than it waited for arrived (``keep``, or every sampled client: it cannot tell a dropped or
absent client from a slow one); 0 when nobody was counted and there is no deadline.

An availability trace is a CSV file with the header ``client,start_hour,end_hour``: trace
client ``client`` is online every simulated day from ``start_hour`` to ``end_hour`` (hours in
[0, 24]; ``end_hour < start_hour`` wraps past midnight), one row per window, several windows
a client allowed. Federation client ``k`` follows the ``k mod C``-th of the ``C`` trace
clients (sorted by id), as trace-driven simulators map traces to clients.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import pathlib

import numpy as np

DEVICE_STREAM = 0x5D5  # the draws of the devices, apart from every other use of the seed
ROUND_STREAM = 0x5D6  # the per-round availability and dropout draws


@dataclasses.dataclass(frozen=True)
class DeviceModel:
  """Medians and spreads of the devices (module docstring); ``compute_median`` 0: compute and
  transfer take no time (only availability and dropout apply)."""

  compute_median: float = 0.0  # examples per second
  compute_sigma: float = 1.0
  uplink_median: float = 0.0  # bytes per second (0: instant)
  downlink_median: float = 0.0
  link_sigma: float = 0.5
  availability: float = 1.0
  dropout: float = 0.0
  deadline: float = 0.0  # seconds (0: none)
  trace: AvailabilityTrace | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class AvailabilityTrace:
  """Daily online windows (module docstring): window ``w`` of trace client ``owner[w]`` (an
  index into ``num_clients`` trace clients) from hour ``start[w]`` to ``end[w]``."""

  owner: np.ndarray
  start: np.ndarray
  end: np.ndarray
  num_clients: int

  def online(self, client_ids, hour: float) -> np.ndarray:
    """``[clients]`` bool: whether each federation client is online at ``hour`` of the day."""
    hour = hour % 24.0
    inside = np.where(
      self.start <= self.end,
      (self.start <= hour) & (hour < self.end),
      (hour >= self.start) | (hour < self.end),
    )
    online = np.zeros(self.num_clients, bool)
    online[self.owner[inside]] = True
    return online[np.asarray(client_ids, np.int64) % self.num_clients]


@functools.lru_cache(maxsize=8)
def read_trace(path: str) -> AvailabilityTrace:
  """The trace in ``path`` (module docstring); ``ValueError`` naming the file and line."""
  rows = []
  with pathlib.Path(path).open(newline="") as file:
    reader = csv.reader(file)
    header = next(reader, None)
    if header != ["client", "start_hour", "end_hour"]:
      raise ValueError(f"{path}: the header must be client,start_hour,end_hour, got {header}")
    for line, row in enumerate(reader, start=2):
      try:
        client, start, end = int(row[0]), float(row[1]), float(row[2])
      except (ValueError, IndexError):
        raise ValueError(f"{path}:{line}: expected client,start_hour,end_hour, got {row}") from None
      if not (0 <= start <= 24 and 0 <= end <= 24):
        raise ValueError(f"{path}:{line}: hours must be in [0, 24], got {start}, {end}")
      rows.append((client, start, end))
  if not rows:
    raise ValueError(f"{path}: no windows")
  clients, start, end = map(np.asarray, zip(*rows))
  ids, owner = np.unique(clients, return_inverse=True)
  return AvailabilityTrace(owner, start, end, len(ids))


def diurnal_trace(num_clients: int, seed: int) -> list[tuple[int, float, float]]:
  """Rows of a synthetic diurnal trace: one window per client, starting at a normal hour of
  mean 18 (evenings, phones on chargers; sd 3, wrapped) and lasting 4 to 12 hours."""
  rng = np.random.default_rng(seed)
  starts = rng.normal(18, 3, num_clients) % 24
  ends = (starts + rng.uniform(4, 12, num_clients)) % 24
  return [(k, round(float(a), 2), round(float(b), 2)) for k, (a, b) in enumerate(zip(starts, ends))]


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
  """What became of a round's sampled clients (``[cohort]`` arrays, in the cohort's order)."""

  available: np.ndarray  # bool
  dropped: np.ndarray  # bool: available, then dropped mid-round
  late: np.ndarray  # bool: available, not dropped, past the deadline, nothing to send
  surplus: np.ndarray  # bool: on time, but slower than the ``keep`` first (over-selection)
  seconds: np.ndarray  # float: each client's t_k (0 without a timed model)
  round_seconds: float
  # int: the local steps each client completes, -1 for all of them (a partial straggler:
  # fewer; see ``round_outcome``'s ``step_examples``)
  steps_done: np.ndarray | None = None

  @property
  def partial(self) -> np.ndarray:
    """bool: counted clients that send partial work (stopped at the deadline)."""
    if self.steps_done is None:
      return np.zeros_like(self.available)
    return self.counted & (self.steps_done >= 0)

  @property
  def counted(self) -> np.ndarray:
    return self.available & ~self.dropped & ~self.late & ~self.surplus

  def arrival_seconds(self, deadline: float) -> np.ndarray:
    """``[cohort]``: when the server learns each client's fate, in seconds after it was sent
    the model (asynchronous aggregation): at once for an unavailable client, at the
    ``deadline`` (a per-client timeout, 0: none) for a late one, after its ``t_k`` for the
    others (a dropped client's missing result is noticed then)."""
    seconds = np.where(self.late & (deadline > 0), deadline, self.seconds)
    return np.where(self.available, seconds, 0.0)


def device_speeds(seed: int, client_ids, model: DeviceModel) -> np.ndarray:
  """``[clients, 3]``: each client's compute (examples/s), uplink and downlink (bytes/s); a
  pure function of ``(seed, client)`` (lognormal around the medians; a 0 median: inf)."""
  client_ids = np.asarray(client_ids, np.int64)
  draws = np.empty((len(client_ids), 3))
  for row, client in enumerate(client_ids):
    draws[row] = np.random.default_rng([seed, DEVICE_STREAM, int(client)]).standard_normal(3)
  medians = np.array([model.compute_median, model.uplink_median, model.downlink_median])
  sigmas = np.array([model.compute_sigma, model.link_sigma, model.link_sigma])
  with np.errstate(divide="ignore"):
    return np.where(medians > 0, medians * np.exp(sigmas * draws), np.inf)


def round_outcome(
  seed: int,
  round_index: int,
  client_ids,
  examples,
  bytes_down: float,
  bytes_up: float,
  model: DeviceModel,
  keep: int | None = None,
  hour: float = 0.0,
  step_examples: int = 0,
) -> RoundOutcome:
  """The round of ``client_ids``, which would process ``examples [cohort]`` examples and move
  ``bytes_down`` / ``bytes_up`` each, starting at ``hour`` of the simulated day; ``keep``:
  count only that many of the first to finish (over-selection; None: all) (module
  docstring). ``step_examples > 0`` (partial work, with a deadline): a client past the
  deadline stops computing in time to upload by it, after ``floor((T - bytes_down / d_k -
  bytes_up / u_k) s_k / step_examples)`` local steps of ``step_examples`` examples; with at
  least one it sends them and is counted, finishing at ``T`` (``steps_done``), else it is
  late."""
  client_ids = np.asarray(client_ids, np.int64)
  size = len(client_ids)
  draws = np.empty((size, 2))
  for row, client in enumerate(client_ids):
    rng = np.random.default_rng([seed, ROUND_STREAM, round_index, int(client)])
    draws[row] = rng.random(2)
  available = draws[:, 0] < model.availability
  if model.trace is not None:
    available &= model.trace.online(client_ids, hour)
  dropped = available & (draws[:, 1] < model.dropout)
  speed, up, down = device_speeds(seed, client_ids, model).T
  seconds = bytes_down / down + np.asarray(examples, np.float64) / speed + bytes_up / up
  late = available & ~dropped & (model.deadline > 0) & (seconds > model.deadline)
  steps_done = None
  if step_examples > 0 and model.deadline > 0:
    compute_budget = model.deadline - bytes_down / down - bytes_up / up
    with np.errstate(invalid="ignore"):
      steps = np.floor(np.maximum(compute_budget, 0.0) * speed / step_examples)
    steps_done = np.where(late & (steps >= 1), steps, -1).astype(np.int64)
    late &= steps_done < 0
    seconds = np.where(steps_done >= 0, model.deadline, seconds)
  finished = available & ~dropped & ~late
  surplus = np.zeros(size, bool)
  if keep is not None and finished.sum() > keep:
    order = np.flatnonzero(finished)[np.argsort(seconds[finished], kind="stable")]
    surplus[order[keep:]] = True
  counted = finished & ~surplus
  round_seconds = float(seconds[counted].max(initial=0.0))
  if model.deadline > 0 and counted.sum() < (size if keep is None else keep):
    round_seconds = float(model.deadline)  # short of results: it waited until the deadline
  return RoundOutcome(available, dropped, late, surplus, seconds, round_seconds, steps_done)
