"""Aggregation rules and clipping (``ops/aggregators``): the ``aggregation`` section and what
it requires of the cohort, the weighting, compression and DP."""

from __future__ import annotations

import dataclasses
from typing import Any

from fedjax_lab.checks import require, typed_fields
from fedjax_lab.config_parsing import Selection
from fedjax_lab.ops.aggregators import AGGREGATORS


@dataclasses.dataclass(frozen=True)
class AggregationConfig(Selection):
  """How cohort contributions are reduced (``ops.aggregators``): the ``rule`` (registered in
  ``AGGREGATORS``, its own settings in ``options``: ``aggregation.<rule>``, e.g.
  ``aggregation.trimmed_mean.fraction``, ``aggregation.krum.byzantine``), after clipping each
  client's update to ``clip_norm`` (0: no clipping; per layer group with ``clip_per_layer``).
  ``clip_quantile > 0``: adaptive clipping (``ops.aggregators.adaptive_clip_mean``),
  ``clip_norm`` its initial norm, ``clip_learning_rate`` its step, ``clip_count_stddev`` the
  noise on its count under DP."""

  SECTION, CHOICES = "aggregation", (("rule", AGGREGATORS, "options"),)

  rule: str = "mean"
  clip_norm: float = 0.0
  clip_per_layer: bool = False  # each layer group clipped to clip_norm / sqrt(groups)
  clip_quantile: float = 0.0  # > 0: adaptive clipping to this quantile of update norms
  clip_learning_rate: float = 0.2  # adaptive clipping's geometric step
  clip_count_stddev: float = 0.0  # noise std on the unclipped count (0: cohort_size / 20)
  options: Any = None

  def __post_init__(self):
    typed_fields(self, "aggregation.")
    self._select_options()
    require(
      0 <= self.clip_quantile < 1,
      "aggregation.clip_quantile",
      "in [0, 1) (0: a fixed clip norm)",
      self.clip_quantile,
    )
    require(
      self.clip_learning_rate > 0, "aggregation.clip_learning_rate", "> 0", self.clip_learning_rate
    )
    require(
      self.clip_count_stddev >= 0,
      "aggregation.clip_count_stddev",
      ">= 0 (0: cohort_size / 20)",
      self.clip_count_stddev,
    )
    require(self.clip_norm >= 0, "aggregation.clip_norm", ">= 0 (0: no clipping)", self.clip_norm)


def rules(config) -> None:
  """A rule's own check of the cohort size (``check_cohort``: Krum's ``n > 2f + 2``, ...);
  adaptive clipping (``clip_quantile``) with the mean, an initial clip norm and no
  compression; per-layer clipping and local DP's noise (scaled to it) with a clip norm."""
  rule, cohort = config.aggregation.rule, config.contributions
  check_cohort = getattr(config.aggregation.options, "check_cohort", None)
  if check_cohort is not None:
    check_cohort(cohort)
  if config.privacy.local_noise_multiplier > 0 or config.aggregation.clip_per_layer:
    require(
      config.aggregation.clip_norm > 0,
      "aggregation.clip_norm",
      "> 0 with privacy.local_noise_multiplier > 0 or aggregation.clip_per_layer",
      config.aggregation.clip_norm,
    )
  if config.aggregation.clip_quantile > 0:
    require(
      config.compression.name == "none",
      "compression.name",
      "none with aggregation.clip_quantile > 0",
      config.compression.name,
    )
    require(
      config.aggregation.clip_norm > 0,
      "aggregation.clip_norm",
      "> 0 with aggregation.clip_quantile > 0 (the initial clip norm)",
      config.aggregation.clip_norm,
    )
    require(rule == "mean", "aggregation.rule", "mean with aggregation.clip_quantile > 0", rule)
