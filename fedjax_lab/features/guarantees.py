"""DP, clipping, robust rules, secure aggregation, compression and model poisoning act in the
setup's aggregator: what they require of the method (``AlgorithmEntry.aggregated_uploads``),
and, for each, the settings it refuses for a method without it."""

from __future__ import annotations

from fedjax_lab.algorithms import ALGORITHMS, methods_declaring
from fedjax_lab.checks import require
from fedjax_lab.features.aggregation import AggregationConfig
from fedjax_lab.ops.attacks import ATTACKS


def rules(config) -> None:
  """DP, clipping, robust rules, secure aggregation and model poisoning act in the setup's
  aggregator: refused for a method whose uploads do not all pass through it
  (``AlgorithmEntry.aggregated_uploads``)."""
  name, aggregation, privacy, attack = (
    config.algorithm.name,
    config.aggregation,
    config.privacy,
    config.attack,
  )
  if not ALGORITHMS.get(name).aggregated_uploads:
    supported = methods_declaring("aggregated_uploads")
    reason = (
      f"for algorithm.name={name} (its uploads reach the server outside the setup's "
      f"aggregator; methods that support it: {', '.join(supported)})"
    )
    defaults = AggregationConfig()
    for field, value, default in (
      ("privacy.noise_multiplier", privacy.noise_multiplier, 0.0),
      ("privacy.local_noise_multiplier", privacy.local_noise_multiplier, 0.0),
      ("aggregation.rule", aggregation.rule, defaults.rule),
      ("aggregation.clip_norm", aggregation.clip_norm, defaults.clip_norm),
      ("aggregation.clip_quantile", aggregation.clip_quantile, defaults.clip_quantile),
      ("aggregation.clip_per_layer", aggregation.clip_per_layer, defaults.clip_per_layer),
      ("compression.name", config.compression.name, "none"),
    ):
      require(value == default, field, f"{default} {reason}", value)
    require(
      attack.kind not in ATTACKS,
      "attack.kind",
      f"none or label_flip (data poisoning) {reason}",
      attack.kind,
    )
