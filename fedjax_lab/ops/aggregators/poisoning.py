"""A reducer fed a poisoned cohort: model-poisoning attacks (``ops/attacks.py``) replace a share
of the contributions before the aggregation rule sees them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedjax_lab.ops import attacks, robust
from fedjax_lab.ops.aggregators.contract import Aggregator


def under_attack(reducer: Aggregator, kind: str, fraction: float, strength: float) -> Aggregator:
  """``reducer`` fed a poisoned cohort: each round ``floor(fraction * K)`` contributions,
  chosen at random, are replaced by attack ``kind`` acting on their updates (contribution minus
  ``reference``; ``ops/attacks.py``). For ``alie`` a ``strength`` of 0 means Baruch et al.'s
  ``z_max`` for the cohort.

  Args:
    reducer: the aggregation rule under test.
    kind: one of ``ops.attacks.ATTACKS``.
    fraction: the attacker's share of each cohort, in [0, 1).
    strength: the attack's scale (sign_flip, scale), noise std (gaussian) or z (alie).

  Returns:
    An ``Aggregator`` without a sum form (the attack sees the cohort).
  """

  def aggregate(stacked, weights, reference, state, key):
    rows, unflatten = robust.flatten_cohort(stacked)
    start = jnp.zeros_like(rows[0]) if reference is None else ravel_pytree(reference)[0]
    count = rows.shape[0]
    choose_key, attack_key, reduce_key = jax.random.split(key, 3)
    malicious = attacks.malicious_rows(choose_key, count, fraction)
    scale = strength
    if kind == "alie" and strength == 0:
      scale = attacks.alie_z(count, int(fraction * count))
    poisoned = start + attacks.poison(kind, rows - start, malicious, scale, attack_key)
    return reducer.aggregate(jax.vmap(unflatten)(poisoned), weights, reference, state, reduce_key)

  return Aggregator(reducer.init, aggregate, upload_overhead=reducer.upload_overhead)
