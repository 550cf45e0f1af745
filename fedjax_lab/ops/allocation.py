"""Joint pruning-ratio and bandwidth allocation for one round, from the KKT conditions.

Problem (per round, devices n of the cohort):

    minimize    sum_n q_n rho_n                       (the pruning term of the bound)
    subject to  a_n (1 - kappa rho_n) + (F + (1 - rho_n) S) / r_n(b_n) <= tau   (latency)
                sum_n b_n <= B,   0 <= rho_n <= rho_max,   b_n >= 0

with ``a_n`` the device's computation time unpruned, ``kappa`` the pruned part's share of it,
``S`` the bits of the prunable weights, ``F`` the bits sent whatever the ratio (bitmap,
biases), ``r_n(b) = b log2(1 + g_n / b)``. The latency constraint is tight at the optimum, so
it fixes the bandwidth a ratio needs, ``b_n(rho) = r_n^{-1}(R_n(rho))`` with the required rate
``R_n(rho) = (F + (1 - rho) S) / (tau - a_n (1 - kappa rho))`` (``wireless.bandwidth_for_rate``,
closed form). ``R_n`` is convex and decreasing in ``rho`` and ``r_n^{-1}`` convex increasing,
so ``b_n(rho)`` is convex decreasing and the problem is convex. Stationarity of the Lagrangian
``sum q_n rho_n + lambda (sum b_n(rho_n) - B)`` gives, for each device,
``q_n + lambda b_n'(rho_n) = 0`` clipped to the box, with
``b_n'(rho) = R_n'(rho) / r_n'(b_n)``, ``R_n'(rho) = -(S beta_n + kappa a_n (F + S)) /
(beta_n + kappa a_n rho)^2``, ``beta_n = tau - a_n``, ``r_n'(b) = log2(1 + g/b) - g / ((b + g)
ln 2)``; ``lambda`` is found by bisection so that the bandwidths sum to ``B``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedjax_lab.ops.wireless import LN2, bandwidth_for_rate

_BISECTION_STEPS = 60


@dataclasses.dataclass(frozen=True)
class Allocation:
  """Per device: pruning ratio and bandwidth (Hz); ``feasible``: the latency budget is met
  for every device (else every ratio is ``rho_max`` and the bandwidth is shared in proportion
  to what each device would need)."""

  rho: np.ndarray
  bandwidth_hz: np.ndarray
  feasible: bool


@dataclasses.dataclass(frozen=True)
class RoundProblem:
  """The data of one round's problem (module docstring); arrays are ``[devices]``."""

  compute_s: np.ndarray  # a_n
  snr_bandwidth: np.ndarray  # g_n = p_n h_n / N0 (Hz)
  weights: np.ndarray  # q_n
  prunable_bits: float  # S
  fixed_bits: float  # F
  shared_fraction: float  # kappa
  latency_s: float  # tau
  bandwidth_hz: float  # B
  rho_max: float

  def required_rate(self, rho) -> np.ndarray:
    """``R_n(rho)``; ``inf`` where the computation alone exceeds ``tau``."""
    slack = self.latency_s - self.compute_s * (1 - self.shared_fraction * rho)
    bits = self.fixed_bits + (1 - rho) * self.prunable_bits
    return np.where(slack > 0, bits / np.where(slack > 0, slack, 1.0), np.inf)

  def bandwidth_needed(self, rho) -> np.ndarray:
    """``b_n(rho)``: the bandwidth that meets the latency budget at ratio ``rho``."""
    return bandwidth_for_rate(self.required_rate(rho), self.snr_bandwidth)

  def bandwidth_slope(self, rho) -> np.ndarray:
    """``b_n'(rho)`` (negative), from the closed forms of the module docstring."""
    a, kappa, s, f = self.compute_s, self.shared_fraction, self.prunable_bits, self.fixed_bits
    beta = self.latency_s - a
    rate_slope = -(s * beta + kappa * a * (f + s)) / (beta + kappa * a * rho) ** 2
    b, g = self.bandwidth_needed(rho), self.snr_bandwidth
    marginal_rate = np.log2(1 + g / b) - g / ((b + g) * LN2)
    return rate_slope / marginal_rate


def _bisect(low, high, goes_right, steps: int = _BISECTION_STEPS):
  """Elementwise bisection: the boundary in ``[low, high]`` where ``goes_right(x)`` (True
  left of it) turns False."""
  low, high = np.array(low, np.float64), np.array(high, np.float64)
  for _ in range(steps):
    middle = (low + high) / 2
    right = goes_right(middle)
    low, high = np.where(right, middle, low), np.where(right, high, middle)
  return high


def allocate(problem: RoundProblem) -> Allocation:
  """The KKT solution of ``problem`` (module docstring)."""
  p = problem
  rho_max = np.full_like(p.compute_s, p.rho_max)
  need_max = p.bandwidth_needed(rho_max)
  if not np.all(np.isfinite(need_max)) or need_max.sum() > p.bandwidth_hz:
    finite = np.where(np.isfinite(need_max), need_max, p.bandwidth_hz)
    return Allocation(rho_max, p.bandwidth_hz * finite / finite.sum(), feasible=False)
  need_none = p.bandwidth_needed(np.zeros_like(rho_max))
  if np.all(np.isfinite(need_none)) and need_none.sum() <= p.bandwidth_hz:
    spare = p.bandwidth_hz * need_none / need_none.sum()  # all of B, latency under tau
    return Allocation(np.zeros_like(rho_max), spare, feasible=True)
  # The smallest ratio each device can run at with finite bandwidth (b_n is decreasing).
  lowest = _bisect(np.zeros_like(rho_max), rho_max, lambda r: ~np.isfinite(p.bandwidth_needed(r)))
  lowest = np.where(np.isfinite(need_none), 0.0, lowest)

  def ratios(multiplier: float) -> np.ndarray:
    """argmin over the box of q_n rho + lambda b_n(rho): where the slope q_n + lambda b_n'
    (increasing) crosses zero."""
    slope = lambda r: p.weights + multiplier * p.bandwidth_slope(r)
    inner = _bisect(lowest, rho_max, lambda r: slope(r) < 0)
    with np.errstate(invalid="ignore"):
      at_lowest = np.where(np.isfinite(need_none), slope(lowest) >= 0, False)
    return np.where(at_lowest, lowest, inner)

  # Bandwidth used falls as lambda rises; bracket lambda in log space, then bisect.
  used = lambda log_multiplier: p.bandwidth_needed(ratios(np.exp(log_multiplier))).sum()
  log_multiplier = _bisect(-60.0, 60.0, lambda m: used(m) > p.bandwidth_hz, steps=60)
  rho = ratios(np.exp(log_multiplier))
  bandwidth = p.bandwidth_needed(rho)
  return Allocation(rho, bandwidth * min(1.0, p.bandwidth_hz / bandwidth.sum()), feasible=True)


def fastest_bandwidth(problem: RoundProblem, rho: np.ndarray) -> np.ndarray:
  """For fixed ratios ``rho``, the bandwidths minimizing the slowest device's latency: the
  smallest budget ``tau`` whose needed bandwidths ``b_n(rho_n; tau)`` fit in ``B`` (found by
  bisection; every device then finishes at that ``tau``)."""
  rho = np.asarray(rho, np.float64)
  with_budget = lambda tau: dataclasses.replace(problem, latency_s=float(tau))
  fits = lambda tau: with_budget(tau).bandwidth_needed(rho).sum() <= problem.bandwidth_hz
  high = max(problem.latency_s, 1e-3)
  while not fits(high):
    high *= 2
  tau = _bisect(0.0, high, lambda t: not fits(t))
  return with_budget(tau).bandwidth_needed(rho)
