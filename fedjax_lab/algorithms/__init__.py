"""Federated algorithms, one module each, found by name in ``ALGORITHMS``.

A method is a module that defines its factory, its options dataclass and an ``AlgorithmEntry``;
registering it is one line here (or, from outside the package, one ``ALGORITHMS.register`` call).
"""

from __future__ import annotations

from fedjax_lab.algorithms import (
  adaptive_pruning,
  apfl,
  asynchronous,
  cfl,
  clustered,
  ditto,
  fedala,
  feddf,
  fedgen,
  fedmr,
  fednova,
  fedopt,
  fedsnd,
  ifca,
  local_only,
  moon,
  partial_personalization,
  per_fedavg,
  pfedlia,
  pfedme,
  scaffold,
  worldlm,
)
from fedjax_lab.algorithms.base import (
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  NoOptions,
  compiled_round,
  payload_bytes,
)
from fedjax_lab.registry import Registry

ALGORITHMS: Registry[AlgorithmEntry] = Registry("algorithm.name")
ALGORITHMS.register("fedavg", fedopt.FEDAVG)
ALGORITHMS.register("fedprox", fedopt.FEDPROX)
ALGORITHMS.register("fedopt", fedopt.FEDOPT)
ALGORITHMS.register("centralized", fedopt.CENTRALIZED)
ALGORITHMS.register("fednova", fednova.ENTRY)
ALGORITHMS.register("scaffold", scaffold.ENTRY)
ALGORITHMS.register("fedbuff", asynchronous.FEDBUFF)
ALGORITHMS.register("fedasync", asynchronous.FEDASYNC)
ALGORITHMS.register("local", local_only.ENTRY)
ALGORITHMS.register("fedper", partial_personalization.FEDPER)
ALGORITHMS.register("fedrep", partial_personalization.FEDREP)
ALGORITHMS.register("lg_fedavg", partial_personalization.LG_FEDAVG)
ALGORITHMS.register("fedbn", partial_personalization.FEDBN)
ALGORITHMS.register("ditto", ditto.ENTRY)
ALGORITHMS.register("apfl", apfl.ENTRY)
ALGORITHMS.register("fedala", fedala.ENTRY)
ALGORITHMS.register("pfedme", pfedme.ENTRY)
ALGORITHMS.register("per_fedavg", per_fedavg.ENTRY)
ALGORITHMS.register("fedmr", fedmr.ENTRY)
ALGORITHMS.register("fedsnd", fedsnd.ENTRY)
ALGORITHMS.register("moon", moon.ENTRY)
ALGORITHMS.register("feddf", feddf.ENTRY)
ALGORITHMS.register("fedgen", fedgen.ENTRY)
ALGORITHMS.register("pfedlia", pfedlia.ENTRY)
ALGORITHMS.register("oracle", clustered.ORACLE)
ALGORITHMS.register("ifca", ifca.ENTRY)
ALGORITHMS.register("cfl", cfl.ENTRY)
ALGORITHMS.register("adaptive_pruning", adaptive_pruning.ENTRY)
ALGORITHMS.register("worldlm", worldlm.ENTRY)

__all__ = [
  "ALGORITHMS",
  "Algorithm",
  "AlgorithmEntry",
  "ClientSetup",
  "NoOptions",
  "compiled_round",
  "payload_bytes",
]


def methods_declaring(flag: str) -> list[str]:
  """The registered methods whose ``AlgorithmEntry`` sets ``flag`` (``aggregated_uploads``,
  ``cohort_reduced``, ...), in registration order: what a refusal lists as allowed."""
  return [name for name in ALGORITHMS.names() if getattr(ALGORITHMS.get(name), flag)]
