"""Central and local differential privacy (``ops/aggregators/privacy.py``,
``ops/accounting.py``): the ``privacy`` section."""

from __future__ import annotations

import dataclasses

from fedjax_lab.checks import one_of, require, typed_fields
from fedjax_lab.ops.accounting import ACCOUNTANTS, PLD_MIN_NOISE_MULTIPLIER


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
  """Central differential privacy (DP-FedAvg, McMahan et al. 2018): each client's update is
  clipped to ``aggregation.clip_norm`` and Gaussian noise of std ``noise_multiplier *
  clip_norm / cohort_size`` is added to the uniform mean. The (epsilon, ``delta``) spent is
  logged each round as ``privacy_epsilon`` (``ops/accounting.py``). 0 turns it off.
  ``local_noise_multiplier > 0``: local DP, each client adds noise of std ``z_local *
  clip_norm`` to its clipped update itself; ``local_privacy_epsilon`` is one client's
  epsilon after taking part in every round so far (no amplification by sampling)."""

  noise_multiplier: float = 0.0
  delta: float = 1e-5
  local_noise_multiplier: float = 0.0  # > 0: local DP, each client adds N(0, (z C)^2)
  # rdp, or pld (tighter; full participation or cohort_sampling=poisson)
  accountant: str = "rdp"

  def __post_init__(self):
    typed_fields(self, "privacy.")
    one_of("privacy.accountant", self.accountant, ACCOUNTANTS)
    require(self.noise_multiplier >= 0, "privacy.noise_multiplier", ">= 0", self.noise_multiplier)
    require(
      self.local_noise_multiplier >= 0,
      "privacy.local_noise_multiplier",
      ">= 0",
      self.local_noise_multiplier,
    )
    require(0 < self.delta < 1, "privacy.delta", "in (0, 1)", self.delta)
    if self.accountant == "pld" and self.noise_multiplier > 0:
      require(
        self.noise_multiplier >= PLD_MIN_NOISE_MULTIPLIER,
        "privacy.noise_multiplier",
        f">= {PLD_MIN_NOISE_MULTIPLIER} with privacy.accountant=pld (smaller noise cannot be "
        "accounted in reasonable time and memory; use privacy.accountant=rdp)",
        self.noise_multiplier,
      )


def rules(config) -> None:
  """Central DP needs a clip norm (it bounds each client's contribution), the mean with
  uniform weights (example-count weights are unbounded) and a compressor that never grows a
  clipped update. (Local DP's clip norm is a clipping rule: ``aggregation.rules``.)"""
  rule = config.aggregation.rule
  if config.privacy.noise_multiplier > 0:
    require(
      getattr(config.compression.options, "keeps_clipping", True),
      "compression.name",
      "none or top_k with privacy.noise_multiplier > 0 (a compressor that can grow a clipped "
      "update breaks the noise's calibration)",
      config.compression.name,
    )
  if config.privacy.noise_multiplier > 0:
    require(
      config.aggregation.clip_norm > 0,
      "aggregation.clip_norm",
      "> 0 with privacy.noise_multiplier > 0 (it bounds each client's contribution)",
      config.aggregation.clip_norm,
    )
    require(rule == "mean", "aggregation.rule", "mean with privacy.noise_multiplier > 0", rule)
    require(
      config.algorithm.weighting == "uniform",
      "algorithm.weighting",
      "uniform with privacy.noise_multiplier > 0 (example-count weights are unbounded)",
      config.algorithm.weighting,
    )
