"""A wireless edge system for federated learning: devices in a cell, an FDMA uplink, and the
latency and energy of a round. Host-side NumPy, seeded; no JAX.

Device n: distance ``d_n`` from the base station, CPU frequency ``f_n`` (cycles/s), cycles per
training sample ``c_n``, transmit power ``p_n``. Per round, channel gain
``h_n = 10^(-PL(d_n)/10) * |g_n|^2`` with the 3GPP urban path loss
``PL(d) = 128.1 + 37.6 log10(d / 1 km)`` dB and Rayleigh fading ``|g_n|^2 ~ Exp(1)`` redrawn each
round. With bandwidth ``b_n`` of the total ``B`` and noise density ``N0`` the uplink rate is
Shannon's ``r_n = b_n log2(1 + p_n h_n / (b_n N0))``.

Defaults are the values common in this literature, e.g. Yang et al., "Energy Efficient
Federated Learning Over Wireless Communication Networks", IEEE TWC 2021 (B = 20 MHz,
N0 = -174 dBm/Hz, cell radius 500 m, the path loss above, effective capacitance 1e-28) and
Chen et al., "A Joint Learning and Communications Framework for Federated Learning Over
Wireless Networks", IEEE TWC 2021 (p = 0.1 W class transmit powers). The cycles per sample
are ours: about the multiply-adds of one training step of a small CNN on a 28x28 image.
"""

from __future__ import annotations

import dataclasses

import numpy as np

LN2 = np.log(2.0)


@dataclasses.dataclass(frozen=True)
class Devices:
  """Fixed properties of N devices (arrays ``[N]``) and of their cell."""

  distance_m: np.ndarray
  cpu_hz: np.ndarray
  cycles_per_sample: np.ndarray
  power_w: np.ndarray
  bandwidth_hz: float
  noise_w_per_hz: float
  capacitance: float = 1e-28  # effective switched capacitance: energy = k c D f^2

  def take(self, ids) -> Devices:
    """The devices ``ids`` (a cohort), same cell."""
    return dataclasses.replace(
      self,
      distance_m=self.distance_m[ids],
      cpu_hz=self.cpu_hz[ids],
      cycles_per_sample=self.cycles_per_sample[ids],
      power_w=self.power_w[ids],
    )

  def channel_gains(self, rng: np.random.Generator) -> np.ndarray:
    """``h_n`` for one round: path loss times a fresh Rayleigh fading power."""
    path_loss_db = 128.1 + 37.6 * np.log10(self.distance_m / 1000.0)
    return 10.0 ** (-path_loss_db / 10.0) * rng.exponential(1.0, self.distance_m.shape)

  def snr_bandwidth(self, gains: np.ndarray) -> np.ndarray:
    """``g_n = p_n h_n / N0`` in Hz: the rate is ``b log2(1 + g / b)``, at most ``g / ln 2``."""
    return self.power_w * gains / self.noise_w_per_hz


def place_devices(
  num_devices: int,
  seed: int,
  *,
  cell_radius_m: float = 500.0,
  min_distance_m: float = 50.0,
  bandwidth_mhz: float = 20.0,
  noise_dbm_per_hz: float = -174.0,
  power_w: float = 0.1,
  cpu_ghz: tuple[float, float] = (1.0, 2.0),
  cycles_per_sample: float = 1e6,
) -> Devices:
  """Devices uniform over the ring ``[min_distance_m, cell_radius_m]`` of a disc around the
  base station (uniform in area), CPU frequencies uniform in ``cpu_ghz``."""
  rng = np.random.default_rng(seed)
  radius_sq = rng.uniform(min_distance_m**2, cell_radius_m**2, num_devices)
  return Devices(
    distance_m=np.sqrt(radius_sq),
    cpu_hz=rng.uniform(*cpu_ghz, num_devices) * 1e9,
    cycles_per_sample=np.full(num_devices, float(cycles_per_sample)),
    power_w=np.full(num_devices, float(power_w)),
    bandwidth_hz=bandwidth_mhz * 1e6,
    noise_w_per_hz=10.0 ** ((noise_dbm_per_hz - 30.0) / 10.0),
  )


def shannon_rate(bandwidth_hz, snr_bandwidth) -> np.ndarray:
  """``b log2(1 + g / b)`` bits/s (0 for ``b = 0``)."""
  b = np.asarray(bandwidth_hz, np.float64)
  safe = np.where(b > 0, b, 1.0)
  return np.where(b > 0, safe * np.log2(1.0 + snr_bandwidth / safe), 0.0)


def bandwidth_for_rate(rate, snr_bandwidth) -> np.ndarray:
  """The bandwidth ``b`` with ``b log2(1 + g / b) = rate``, in closed form: with
  ``c = rate ln 2 / g`` and ``x = g / b``, ``ln(1 + x) = c x`` gives
  ``1 + x = -W_{-1}(-c e^{-c}) / c`` (Lambert W, lower branch). ``inf`` when ``rate`` is at
  or beyond the infinite-bandwidth limit ``g / ln 2``; 0 for ``rate <= 0``."""
  from scipy.special import lambertw  # here, not at the top: only adaptive pruning needs scipy

  rate, g = np.broadcast_arrays(np.asarray(rate, np.float64), np.asarray(snr_bandwidth, np.float64))
  c = np.where(g > 0, rate * LN2 / np.where(g > 0, g, 1.0), np.inf)
  reachable = (c > 0) & (c < 1)
  c_safe = np.where(reachable, c, 0.5)
  y = -np.real(lambertw(-c_safe * np.exp(-c_safe), k=-1)) / c_safe
  bandwidth = g / np.maximum(y - 1.0, np.finfo(np.float64).tiny)
  return np.where(reachable, bandwidth, np.where(rate <= 0, 0.0, np.inf))


def computation_seconds(devices: Devices, samples, rho, shared_fraction: float) -> np.ndarray:
  """``c_n S_n (1 - kappa rho_n) / f_n``: ``S_n`` samples processed in the round, ``kappa`` the
  shared (prunable) part's share of the computation."""
  full = devices.cycles_per_sample * np.asarray(samples, np.float64) / devices.cpu_hz
  return full * (1.0 - shared_fraction * np.asarray(rho))


def computation_joules(devices: Devices, samples, rho, shared_fraction: float) -> np.ndarray:
  """``k c_n S_n (1 - kappa rho_n) f_n^2``."""
  cycles = devices.cycles_per_sample * np.asarray(samples, np.float64)
  return devices.capacitance * cycles * (1 - shared_fraction * np.asarray(rho)) * devices.cpu_hz**2
