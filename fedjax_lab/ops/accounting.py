"""The privacy spent by central DP-FedAvg, from Google's ``dp-accounting`` (host side).

Each round releases the Gaussian mechanism on the sum of clipped contributions (norm at most
``C``), noise std ``z C``, composed over the rounds. Two samplings, as the run draws cohorts
(``round_step.cohort_ids``):

- ``fixed``: ``K`` clients uniformly without replacement from ``N``, a
  ``SampledWithoutReplacementDpEvent`` under the replace-one neighbouring relation. Replacing
  one client moves the sum by up to ``2 C``, so the mechanism's noise multiplier with respect
  to its sensitivity is ``z / 2``: what the Rényi-DP accountant is given (it does not apply
  the relation to a Gaussian itself). The privacy-loss-distribution accountant (tighter) takes
  ``z`` and applies the relation itself; ``dp-accounting`` has it only for full participation
  (``K = N``).
- ``poisson``: each client joins each round independently with probability ``q = K / N``, a
  ``PoissonSampledDpEvent`` under add-or-remove-one (one client moves the sum by ``C``, so the
  Gaussian is given ``z``); both accountants support it. Epsilons of the two samplings are
  about different neighbouring relations: replace-one is the stronger guarantee (about twice
  the sensitivity).
"""

from __future__ import annotations

import functools
import math

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("fixed", "poisson")
# The PLD accountant's discretized distributions grow as the noise shrinks: on 2 CPU cores, 50
# rounds of full participation take 16 s at z = 0.5, 47 s at 0.2, 172 s at 0.1, and z = 1e-6
# asks for petabytes. Below this bound (where epsilons run to the hundreds anyway) config
# validation refuses it; the RDP accountant answers any z in microseconds.
PLD_MIN_NOISE_MULTIPLIER = 0.5


@functools.lru_cache(maxsize=4096)
def epsilon(
  rounds: int,
  cohort_size: int,
  num_clients: int,
  noise_multiplier: float,
  delta: float,
  accountant: str = "rdp",
  sampling: str = "fixed",
) -> float:
  """(epsilon, ``delta``)-DP of ``rounds`` rounds, client-level (module docstring), by the
  ``accountant`` (``rdp`` or ``pld``) for cohorts drawn by ``sampling`` (``fixed``: exactly
  ``cohort_size``; ``poisson``: ``cohort_size`` expected); ``noise_multiplier`` is ``z``
  (noise std / clip norm)."""
  if noise_multiplier <= 0:
    return float("inf")
  import dp_accounting  # here, not at the top: ~65 MB and 0.5 s that only noisy runs need
  from dp_accounting import pld, rdp

  if sampling == "poisson":
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    round_event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if cohort_size < num_clients:
      round_event = dp_accounting.PoissonSampledDpEvent(cohort_size / num_clients, round_event)
  elif accountant == "pld":
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE
    if cohort_size < num_clients:
      raise ValueError(
        "the PLD accountant needs full participation (cohort_size == num_clients) or "
        "cohort_sampling=poisson; use accountant='rdp' for fixed-size sampled cohorts"
      )
    round_event = dp_accounting.GaussianDpEvent(noise_multiplier)
  else:
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE
    round_event = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    if cohort_size < num_clients:
      round_event = dp_accounting.SampledWithoutReplacementDpEvent(
        num_clients, cohort_size, round_event
      )
  tracker = (pld.PLDAccountant if accountant == "pld" else rdp.RdpAccountant)(
    neighboring_relation=relation
  )
  tracker.compose(dp_accounting.SelfComposedDpEvent(round_event, rounds))
  return float(tracker.get_epsilon(delta))


@functools.lru_cache(maxsize=4096)
def randomized_response_epsilon(releases: int, epsilon: float, delta: float) -> float:
  """(epsilon_total, ``delta``) of ``releases`` binary randomized responses, each
  ``epsilon``-local-DP (kept with probability ``e^eps / (1 + e^eps)``), about the same
  person's data, composed as privacy loss distributions (tighter than ``releases * epsilon``).
  Each is ``dp-accounting``'s randomized response over 2 buckets with noise parameter
  ``p = 2 / (1 + e^eps)`` (the value is replaced by a uniform bucket with probability
  ``p``)."""
  if releases == 0:
    return 0.0
  import dp_accounting
  from dp_accounting.pld import privacy_loss_distribution

  # Built from the PLD itself: dp-accounting's PLDAccountant composes a randomized response
  # once whatever the count of a SelfComposedDpEvent (it drops the count; version 0.6.0).
  one = privacy_loss_distribution.from_randomized_response(
    noise_parameter=2.0 / (1.0 + math.exp(epsilon)),
    num_buckets=2,
    neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
  )
  return float(one.self_compose(releases).get_epsilon_for_delta(delta))
