"""Update compression and error feedback (``ops/aggregators/compression.py``): the
``compression`` section and what error feedback requires of the method and the other settings."""

from __future__ import annotations

import dataclasses
from typing import Any

from fedjax_lab.algorithms import ALGORITHMS, methods_declaring
from fedjax_lab.checks import require, typed_fields
from fedjax_lab.config_parsing import Selection
from fedjax_lab.ops.aggregators import COMPRESSORS


@dataclasses.dataclass(frozen=True)
class CompressionConfig(Selection):
  """Update compression (``ops/aggregators/compression.py``, registered in ``COMPRESSORS``):
  ``name`` (``none``, ``qsgd``, ``top_k``, ``random_k``) and its table
  (``compression.qsgd.bits``, ``compression.top_k.fraction``); the uploads' bytes are counted
  as encoded. ``error_feedback``: each client keeps what its compression left out and adds it
  to its next upload (``ops.aggregators.error_feedback``; a residual per client in the state)."""

  SECTION, CHOICES = "compression", (("name", COMPRESSORS, "options"),)

  name: str = "none"
  options: Any = None
  error_feedback: bool = False

  def __post_init__(self):
    typed_fields(self, "compression.")
    self._select_options()
    require(
      self.name != "none" or not self.error_feedback,
      "compression.error_feedback",
      "false with compression.name=none (there is nothing left out to feed back)",
      self.error_feedback,
    )


def rules(config) -> None:
  """Error feedback keeps a residual per client, applied by ``ClientSetup.cohort_reduce``
  ahead of the rest of the aggregation: for methods reduced by it alone, fixed-size cohorts
  (one row per distinct client), and no clipping or local noise (they would act on the
  compressed message, not on the update)."""
  if not config.compression.error_feedback:
    return
  name = config.algorithm.name
  require(
    ALGORITHMS.get(name).cohort_reduced,
    "compression.error_feedback",
    f"false for algorithm.name={name} (it needs a method whose uploads ClientSetup."
    f"cohort_reduce reduces: {', '.join(methods_declaring('cohort_reduced'))})",
    True,
  )
  require(
    config.cohort_sampling == "fixed",
    "cohort_sampling",
    "fixed with compression.error_feedback (a residual per distinct client)",
    config.cohort_sampling,
  )
  for field, value in (
    ("aggregation.clip_norm", config.aggregation.clip_norm),
    ("privacy.local_noise_multiplier", config.privacy.local_noise_multiplier),
  ):
    require(
      value == 0,
      field,
      "0 with compression.error_feedback (the residual would escape the clipping)",
      value,
    )
