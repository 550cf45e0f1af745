"""The clients' devices and a simulated clock: who is available, who drops, who is late, and how
long a round takes (host side, NumPy; a pure function of the seed, the round and the clients).

Each client ``k`` has a device drawn once from ``(seed, k)``: a compute speed ``s_k`` (examples
per second) and up/down link rates ``u_k``, ``d_k`` (bytes per second), each lognormal around
its median (``sigma``: the spread of its log), so a million clients cost nothing until sampled.
In a round, client ``k`` needs

  ``t_k = bytes_down / d_k + examples_k / s_k + bytes_up / u_k``

seconds (``examples_k``: the examples its local steps process). A sampled client is available
with probability ``availability`` and, once it started, drops with probability ``dropout``
(draws from ``(seed, round, k)``); with a ``deadline`` ``T > 0``, a client with ``t_k > T`` is
late. Over-selection (``keep``, as production systems do it: sample more clients than needed)
counts only the ``keep`` first to finish; the slower ones are ``surplus``, cancelled once the
server has enough. Only available, not dropped, on-time, not surplus clients are counted: the
others contribute nothing (the runner gives them no examples, aggregation weight 0, as the
padding of Poisson cohorts). The round lasts ``max_k t_k`` over the counted clients, or ``T``
when a client was late and the server had fewer than ``keep`` (it waited until the deadline);
0 when nobody was counted and there is no deadline.
"""

from __future__ import annotations

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
  """What became of a round's sampled clients (``[cohort]`` arrays, in the cohort's order)."""

  available: np.ndarray  # bool
  dropped: np.ndarray  # bool: available, then dropped mid-round
  late: np.ndarray  # bool: available, not dropped, past the deadline
  surplus: np.ndarray  # bool: on time, but slower than the ``keep`` first (over-selection)
  seconds: np.ndarray  # float: each client's t_k (0 without a timed model)
  round_seconds: float

  @property
  def counted(self) -> np.ndarray:
    return self.available & ~self.dropped & ~self.late & ~self.surplus


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
) -> RoundOutcome:
  """The round of ``client_ids``, which would process ``examples [cohort]`` examples and move
  ``bytes_down`` / ``bytes_up`` each; ``keep``: count only that many of the first to finish
  (over-selection; None: all) (module docstring)."""
  client_ids = np.asarray(client_ids, np.int64)
  size = len(client_ids)
  draws = np.empty((size, 2))
  for row, client in enumerate(client_ids):
    rng = np.random.default_rng([seed, ROUND_STREAM, round_index, int(client)])
    draws[row] = rng.random(2)
  available = draws[:, 0] < model.availability
  dropped = available & (draws[:, 1] < model.dropout)
  speed, up, down = device_speeds(seed, client_ids, model).T
  seconds = bytes_down / down + np.asarray(examples, np.float64) / speed + bytes_up / up
  late = available & ~dropped & (model.deadline > 0) & (seconds > model.deadline)
  finished = available & ~dropped & ~late
  surplus = np.zeros(size, bool)
  if keep is not None and finished.sum() > keep:
    order = np.flatnonzero(finished)[np.argsort(seconds[finished], kind="stable")]
    surplus[order[keep:]] = True
  counted = finished & ~surplus
  round_seconds = float(seconds[counted].max(initial=0.0))
  if late.any() and counted.sum() < (size if keep is None else keep):
    round_seconds = float(model.deadline)  # short of results: it waited until the deadline
  return RoundOutcome(available, dropped, late, surplus, seconds, round_seconds)
