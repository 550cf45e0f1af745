"""Poisson cohort sampling (``round_step.padded_cohort``, the fixed-denominator mean) and the
PLD accountant: what they require of the method, the aggregation and the cohort."""

from __future__ import annotations

from fedjax_lab.algorithms import ALGORITHMS, methods_declaring
from fedjax_lab.checks import require


def rules(config) -> None:
  """Poisson cohorts (padded with empty clients, reduced over a fixed denominator) against
  the method, the aggregation and the accountant."""
  if config.cohort_sampling == "poisson":
    name, aggregation = config.algorithm.name, config.aggregation
    require(
      ALGORITHMS.get(name).any_cohort_size,
      "cohort_sampling",
      f"fixed for {name} (poisson needs a method without per-client state: "
      + ", ".join(methods_declaring("any_cohort_size"))
      + ")",
      config.cohort_sampling,
    )
    require(
      aggregation.rule == "mean" and aggregation.clip_quantile == 0,
      "aggregation.rule",
      "mean, without clip_quantile, with cohort_sampling=poisson",
      aggregation.rule,
    )
    require(
      config.algorithm.weighting == "uniform",
      "algorithm.weighting",
      "uniform with cohort_sampling=poisson (the denominator is the expected cohort size)",
      config.algorithm.weighting,
    )
    require(
      config.attack.kind in ("none", "label_flip"),
      "attack.kind",
      "none or label_flip with cohort_sampling=poisson",
      config.attack.kind,
    )
  elif config.privacy.accountant == "pld" and config.privacy.noise_multiplier > 0:
    require(
      config.cohort_size == config.data.num_clients,
      "privacy.accountant",
      "rdp for fixed-size cohorts smaller than data.num_clients (pld needs full "
      "participation or cohort_sampling=poisson)",
      config.privacy.accountant,
    )
