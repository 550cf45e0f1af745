"""Simulated devices, client losses and the simulated clock (``ops/systems.py``): the
``systems`` section and what losing clients requires of the method and the other settings."""

from __future__ import annotations

import dataclasses
import math
import pathlib

from fedjax_lab.algorithms import ALGORITHMS, methods_declaring
from fedjax_lab.checks import one_of, require, typed_fields
from fedjax_lab.ops.systems import DeviceModel, read_trace

STRAGGLERS = ("drop", "partial")  # systems.stragglers
MAX_LOG_SIGMA = 5.0  # systems.compute_sigma and link_sigma


@dataclasses.dataclass(frozen=True)
class SystemsConfig:
  """The clients' devices and the simulated clock (``ops/systems.py``). ``compute_median > 0``
  gives every client a compute speed (examples per second, lognormal with ``compute_sigma``)
  and links (``uplink_mbps`` / ``downlink_mbps`` medians, 0: instant; ``link_sigma``), and
  logs each round's ``simulated_seconds``. A sampled client is available with probability
  ``availability`` and drops mid-round with probability ``dropout``; with ``deadline_s > 0``
  one slower than the deadline is late. ``over_selection = o > 0`` samples
  ``ceil((1 + o) cohort_size)`` clients and counts the ``cohort_size`` first to finish.
  ``availability_trace``: a CSV of daily online windows per client (``ops/systems.py``), read
  at the simulated time of day each round starts (a deadline keeps the clock going).
  ``stragglers``: a client past the deadline is dropped (``drop``) or sends the local steps
  it finished in time (``partial``: methods with ``AlgorithmEntry.cohort_reduced``; FedNova's
  normalized averaging accounts for the unequal steps). Unavailable, dropped, late and
  surplus clients contribute nothing. All off by default (an ideal system)."""

  compute_median: float = 0.0
  compute_sigma: float = 1.0
  uplink_mbps: float = 0.0
  downlink_mbps: float = 0.0
  link_sigma: float = 0.5
  availability: float = 1.0
  dropout: float = 0.0
  deadline_s: float = 0.0
  over_selection: float = 0.0  # sample (1 + this) x cohort_size, count the cohort_size first
  availability_trace: str = ""  # a CSV of daily online windows (ops/systems.py)
  stragglers: str = "drop"  # past the deadline: drop, or send the steps done (partial)

  def __post_init__(self):
    typed_fields(self, "systems.")
    require(
      self.over_selection == 0 or self.compute_median > 0,
      "systems.over_selection",
      "0 unless systems.compute_median > 0 (the first to finish need timed devices)",
      self.over_selection,
    )
    require(self.over_selection >= 0, "systems.over_selection", ">= 0", self.over_selection)
    if self.availability_trace:
      require(
        self.deadline_s > 0,
        "systems.deadline_s",
        "> 0 with systems.availability_trace (rounds must take time while nobody is online)",
        self.deadline_s,
      )
      require(
        pathlib.Path(self.availability_trace).is_file(),
        "systems.availability_trace",
        "an existing CSV file",
        self.availability_trace,
      )
      read_trace(self.availability_trace)  # its format, checked before anything runs
    one_of("systems.stragglers", self.stragglers, STRAGGLERS)
    require(
      self.stragglers == "drop" or self.deadline_s > 0,
      "systems.stragglers",
      "drop unless systems.deadline_s > 0 (partial work is what a straggler did by it)",
      self.stragglers,
    )
    for name in ("compute_median", "uplink_mbps", "downlink_mbps", "deadline_s"):
      value = getattr(self, name)
      require(value >= 0, f"systems.{name}", ">= 0 (0: off)", value)
    for name in ("compute_sigma", "link_sigma"):
      require(
        0 <= getattr(self, name) <= MAX_LOG_SIGMA,
        f"systems.{name}",
        f"in [0, {MAX_LOG_SIGMA}] (a log-normal spread: {MAX_LOG_SIGMA} already puts devices "
        f"e^{MAX_LOG_SIGMA} = {math.exp(MAX_LOG_SIGMA):.0f} times apart at one standard "
        "deviation; beyond it simulated times overflow)",
        getattr(self, name),
      )
    require(0 < self.availability <= 1, "systems.availability", "in (0, 1]", self.availability)
    require(0 <= self.dropout < 1, "systems.dropout", "in [0, 1)", self.dropout)
    require(
      self.deadline_s == 0 or self.compute_median > 0,
      "systems.deadline_s",
      "0 unless systems.compute_median > 0 (a deadline needs timed devices)",
      self.deadline_s,
    )

  @property
  def timed(self) -> bool:
    """Whether rounds take simulated time (``simulated_seconds`` is logged)."""
    return self.compute_median > 0

  @property
  def loses_clients(self) -> bool:
    """Whether some sampled clients may contribute nothing."""
    return (
      self.availability < 1
      or self.dropout > 0
      or self.deadline_s > 0
      or self.over_selection > 0
      or bool(self.availability_trace)
    )

  def sampled(self, cohort_size: int) -> int:
    """Clients sampled a round for a cohort of ``cohort_size`` (more with over-selection)."""
    return math.ceil((1 + self.over_selection) * cohort_size - 1e-9)

  def device_model(self) -> DeviceModel:
    bytes_per_second = lambda mbps: mbps * 1e6 / 8
    return DeviceModel(
      self.compute_median,
      self.compute_sigma,
      bytes_per_second(self.uplink_mbps),
      bytes_per_second(self.downlink_mbps),
      self.link_sigma,
      self.availability,
      self.dropout,
      self.deadline_s,
      read_trace(self.availability_trace) if self.availability_trace else None,
    )


def rules(config) -> None:
  """Clients lost to availability, dropouts and deadlines train as empty clients: only for
  methods that tolerate them (``any_cohort_size`` or ``keeps_lost_clients``), with the mean,
  and without central DP (its noise is calibrated to the cohort size, not to the clients
  that report)."""
  if not config.systems.loses_clients:
    return
  if config.systems.over_selection > 0:
    sampled = config.systems.sampled(config.cohort_size)
    require(
      sampled <= config.data.num_clients and config.cohort_sampling == "fixed",
      "systems.over_selection",
      f"such that ceil((1 + over_selection) * cohort_size) = {sampled} <= data.num_clients="
      f"{config.data.num_clients}, with cohort_sampling=fixed",
      config.systems.over_selection,
    )
  name = config.algorithm.name
  tolerant = lambda n: ALGORITHMS.get(n).any_cohort_size or ALGORITHMS.get(n).keeps_lost_clients
  require(
    tolerant(name),
    "algorithm.name",
    "a method that can lose clients with systems.availability < 1, systems.dropout > 0, "
    "systems.deadline_s > 0, over-selection or a trace ("
    + ", ".join(n for n in ALGORITHMS.names() if tolerant(n))
    + ")",
    name,
  )
  if config.systems.stragglers == "partial":
    require(
      ALGORITHMS.get(name).cohort_reduced,
      "systems.stragglers",
      f"drop for algorithm.name={name} (partial work needs a method whose local training "
      f"takes a step limit: {', '.join(methods_declaring('cohort_reduced'))})",
      config.systems.stragglers,
    )
  require(
    config.aggregation.rule == "mean",
    "aggregation.rule",
    "mean when systems lose clients (an empty client is a vote for the start model)",
    config.aggregation.rule,
  )
  require(
    config.privacy.noise_multiplier == 0,
    "privacy.noise_multiplier",
    "0 when systems lose clients (the noise is calibrated to the sampled cohort)",
    config.privacy.noise_multiplier,
  )
