"""Malicious clients (``ops/attacks.py``, ``data/poisoning.py``): the ``attack`` section."""

from __future__ import annotations

import dataclasses

from fedjax_lab.checks import one_of, require, typed_fields
from fedjax_lab.ops.attacks import ATTACKS


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """Malicious clients. Model poisoning (``sign_flip``, ``scale``, ``gaussian``, ``alie``;
  ``ops/attacks.py``): each round ``floor(fraction * cohort_size)`` random contributions are
  replaced before aggregation, ``strength`` their factor, noise std or z (``alie``: 0 means
  Baruch et al.'s z_max). Data poisoning (``label_flip``): ``floor(fraction *
  data.num_clients)`` fixed clients train on flipped labels."""

  kind: str = "none"
  fraction: float = 0.0
  strength: float = 0.0

  def __post_init__(self):
    typed_fields(self, "attack.")
    one_of("attack.kind", self.kind, ("none", "label_flip") + ATTACKS)
    require(0 <= self.fraction < 1, "attack.fraction", "in [0, 1)", self.fraction)
    require(self.strength >= 0, "attack.strength", ">= 0", self.strength)
    if self.kind in ("sign_flip", "scale", "gaussian"):
      require(self.strength > 0, "attack.strength", f"> 0 for attack.kind={self.kind}", 0.0)


def rules(config) -> None:
  """An attack must have at least one attacker (among the cohort's contributions for model
  poisoning, the population for label flipping); ``attack.kind=none`` takes no attack
  fields."""
  attack = config.attack
  if attack.kind == "none":
    require(attack.fraction == 0, "attack.fraction", "0 with attack.kind=none", attack.fraction)
    require(attack.strength == 0, "attack.strength", "0 with attack.kind=none", attack.strength)
    return
  label_flip = attack.kind == "label_flip"
  among, count = ("data.num_clients", config.data.num_clients)
  if not label_flip:
    among, count = ("cohort_size", config.contributions)
  require(
    int(attack.fraction * count) >= 1,
    "attack.fraction",
    f">= 1 / {among} = {1 / count:.4g} for attack.kind={attack.kind} (floor(fraction * "
    f"{count}) attackers; fewer is no attack)",
    attack.fraction,
  )
