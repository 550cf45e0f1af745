"""Asynchronous aggregation (``algorithms/asynchronous.py``): what an asynchronous method
requires of the devices, over-selection and DP, and the checks a method's options make of the
cohort and the population."""

from __future__ import annotations

from fedjax_lab.algorithms import ALGORITHMS
from fedjax_lab.checks import require


def rules(config) -> None:
  """Asynchronous methods (``AlgorithmEntry.asynchronous``) need timed devices (results
  arrive in the order of their simulated finish times), take no over-selection (there is no
  round to fill) and no DP noise (the accountant counts one sampled cohort a round; the
  results of a step are not one). The method's options check the cohort size and the
  population (``check_cohort``, ``check_population``)."""
  check_cohort = getattr(config.algorithm.options, "check_cohort", None)
  if check_cohort is not None:
    check_cohort(config.cohort_size)
  name = config.algorithm.name
  if not ALGORITHMS.get(name).asynchronous:
    return
  require(
    config.systems.timed,
    "systems.compute_median",
    f"> 0 for algorithm.name={name} (results arrive in the order of the devices' finish times)",
    config.systems.compute_median,
  )
  require(
    config.systems.over_selection == 0,
    "systems.over_selection",
    f"0 for algorithm.name={name} (a server step takes the first cohort_size results)",
    config.systems.over_selection,
  )
  for field, value in (
    ("privacy.noise_multiplier", config.privacy.noise_multiplier),
    ("privacy.local_noise_multiplier", config.privacy.local_noise_multiplier),
  ):
    require(
      value == 0,
      field,
      f"0 for algorithm.name={name} (the accountant assumes a sampled cohort a round; "
      "asynchronous arrivals are not one)",
      value,
    )
  check_population = getattr(config.algorithm.options, "check_population", None)
  if check_population is not None:
    check_population(config.data.num_clients)
