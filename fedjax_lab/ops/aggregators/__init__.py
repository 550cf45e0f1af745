"""Aggregation, as a package: the contract (``contract.py``), reducers (``reducers.py``),
privacy pieces (``privacy.py``) and poisoned cohorts (``poisoning.py``).

The aggregation contract: ``Aggregator(init, aggregate, prepare, finalize)``, pure functions,
composed like optax transformations.

A cohort's contributions are a pytree whose leaves are ``[cohort, ...]`` (client models, control
variates...), with weights ``w [cohort]`` and a ``reference`` (the model the clients started
from, or None). ``aggregate(stacked, weights, reference, state, key) -> (value, state)`` reduces
them to one pytree; ``init(template) -> state`` starts the aggregator's state (``()`` if it has
none) from one contribution's shape.

An aggregator that is a weighted sum in disguise also declares its *sum form*:
``aggregate(c, w, r, s, k) == finalize(sum_k w_k prepare(c_k, r, s, k_k), sum_k w_k, r, s, k)``
(up to rounding). Algorithms then reduce the cohort with ``Executor.map_sum`` (accumulated per
micro-cohort, memory flat in the cohort) instead of stacking it; an aggregator without one (a
median) gets the stack.

``chain(*client_transforms, reducer, *server_transforms)`` builds one aggregator: each
``ClientTransform`` maps every contribution before the reduction (clipping, local noise), the
reducer is an ``Aggregator``, each ``ServerTransform`` maps its output (central noise). The
chain keeps the reducer's sum form. Registered rules: ``AGGREGATORS`` (mean, median, and the
robust rules of ``ops/robust.py``: trimmed mean, Krum, Multi-Krum, geometric median, centered
clipping).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fedjax_lab.ops.aggregators.compression import (
  CompressorEntry,
  QSGDOptions,
  RandomKOptions,
  TopKOptions,
  error_feedback,
  qsgd,
  random_k,
  top_k,
  with_feedback,
)
from fedjax_lab.ops.aggregators.contract import (
  Aggregator,
  ClientTransform,
  ServerTransform,
  chain,
  no_state,
)
from fedjax_lab.ops.aggregators.poisoning import under_attack
from fedjax_lab.ops.aggregators.privacy import (
  adaptive_clip_mean,
  add_gaussian_noise,
  clip_layer_norms,
  clip_update_norm,
  gaussian_noise,
  local_gaussian_noise,
  update_noise_multiplier,
)
from fedjax_lab.ops.aggregators.reducers import (
  CenteredClipOptions,
  GeometricMedianOptions,
  KrumOptions,
  MultiKrumOptions,
  SecureMeanOptions,
  TrimmedMeanOptions,
  centered_clip,
  fixed_denominator_mean,
  geometric_median,
  mean,
  median,
  multi_krum,
  secure_mean,
  trimmed_mean,
)
from fedjax_lab.registry import NoOptions, Registry

__all__ = [
  "AGGREGATORS",
  "COMPRESSORS",
  "CompressorEntry",
  "Aggregator",
  "AggregatorEntry",
  "ClientTransform",
  "ServerTransform",
  "adaptive_clip_mean",
  "add_gaussian_noise",
  "centered_clip",
  "chain",
  "clip_layer_norms",
  "clip_update_norm",
  "error_feedback",
  "fixed_denominator_mean",
  "gaussian_noise",
  "geometric_median",
  "local_gaussian_noise",
  "mean",
  "median",
  "multi_krum",
  "no_state",
  "secure_mean",
  "trimmed_mean",
  "under_attack",
  "update_noise_multiplier",
  "with_feedback",
]


@dataclasses.dataclass(frozen=True)
class AggregatorEntry:
  """A registered rule: ``build(options) -> Aggregator``, ``options`` an instance of the
  entry's ``options`` dataclass (the config table ``aggregation.<rule>``)."""

  build: Callable[[Any], Aggregator]
  options: type = NoOptions


AGGREGATORS: Registry[AggregatorEntry] = Registry("aggregation.rule")
AGGREGATORS.register("mean", AggregatorEntry(lambda options: mean()))
AGGREGATORS.register("median", AggregatorEntry(lambda options: median()))
AGGREGATORS.register(
  "trimmed_mean", AggregatorEntry(lambda o: trimmed_mean(o.fraction), TrimmedMeanOptions)
)
AGGREGATORS.register("krum", AggregatorEntry(lambda o: multi_krum(o.byzantine, 1), KrumOptions))
AGGREGATORS.register(
  "multi_krum", AggregatorEntry(lambda o: multi_krum(o.byzantine, o.selected), MultiKrumOptions)
)
AGGREGATORS.register(
  "geometric_median",
  AggregatorEntry(lambda o: geometric_median(o.iterations), GeometricMedianOptions),
)
AGGREGATORS.register(
  "centered_clip",
  AggregatorEntry(lambda o: centered_clip(o.radius, o.iterations), CenteredClipOptions),
)
AGGREGATORS.register(
  "secure_mean", AggregatorEntry(lambda o: secure_mean(o.scale_bits, o.dropout), SecureMeanOptions)
)

# Update compression (``compression.name``): a client transform placed before the reducer.
COMPRESSORS: Registry[CompressorEntry] = Registry("compression.name")
COMPRESSORS.register("none", CompressorEntry(lambda options: None, NoOptions))
COMPRESSORS.register("qsgd", CompressorEntry(lambda o: qsgd(o.bits), QSGDOptions))
COMPRESSORS.register("top_k", CompressorEntry(lambda o: top_k(o.fraction), TopKOptions))
COMPRESSORS.register("random_k", CompressorEntry(lambda o: random_k(o.fraction), RandomKOptions))
