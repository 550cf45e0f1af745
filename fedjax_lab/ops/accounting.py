"""The privacy spent by central DP-FedAvg, from Google's ``dp-accounting`` (host side).

Each round releases the Gaussian mechanism with noise multiplier ``z`` (noise std over the
clipped contributions' sensitivity) on a cohort of ``K`` clients drawn uniformly without
replacement from ``N`` (``runner.cohort_ids``): a ``SampledWithoutReplacementDpEvent`` under
the replace-one neighbouring relation, composed over the rounds, accounted with Rényi DP.
"""

from __future__ import annotations

import functools

import dp_accounting
from dp_accounting import rdp


@functools.lru_cache(maxsize=4096)
def epsilon(
  rounds: int, cohort_size: int, num_clients: int, noise_multiplier: float, delta: float
) -> float:
  """(epsilon, ``delta``)-DP of ``rounds`` rounds, client-level, by the RDP accountant."""
  if noise_multiplier <= 0:
    return float("inf")
  round_event = dp_accounting.GaussianDpEvent(noise_multiplier)
  if cohort_size < num_clients:
    round_event = dp_accounting.SampledWithoutReplacementDpEvent(
      num_clients, cohort_size, round_event
    )
  accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  accountant.compose(dp_accounting.SelfComposedDpEvent(round_event, rounds))
  return float(accountant.get_epsilon(delta))
