"""The cross-cutting features of a run, each in one module beside its config section:
aggregation rules and clipping, DP and local DP, compression and error feedback, attacks,
the guarantees that need every upload in the aggregator, Poisson sampling and the PLD
accountant, simulated systems, asynchronous aggregation.

Each module states, in ``rules(config)``, what the feature requires of the method (its
``AlgorithmEntry`` flags) and of the other settings, raising one line naming the field and
what is allowed. ``ExperimentConfig`` checks its own fields, then runs ``RULES`` in order
(the first broken rule is the one reported); a new feature is a module here plus a line in
``RULES``."""

from __future__ import annotations

from fedjax_lab.features import (
  aggregation,
  asynchrony,
  attacks,
  compression,
  guarantees,
  privacy,
  sampling,
  systems,
)

RULES = (
  aggregation.rules,
  privacy.rules,
  guarantees.rules,
  attacks.rules,
  sampling.rules,
  systems.rules,
  asynchrony.rules,
  compression.rules,
)
