"""FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization"): normalized averaging for clients that take different numbers of
local steps.

With local SGD, client ``k`` takes ``tau_k`` steps (``epochs * ceil(n_k / B)``: more data,
more steps) from ``x`` to ``y_k``. FedAvg's ``x + sum_k p_k (y_k - x)`` weights each client's
update by its steps as well as by ``p_k``, so it converges to a different objective than the
weighted one. FedNova averages the per-step updates and rescales by the effective steps:

  ``x <- x + tau_eff * sum_k p_k (y_k - x) / tau_k``,  ``tau_eff = sum_k p_k tau_k``

(``p_k = w_k / sum_j w_j``, ``w_k`` the setup's weighting). With equal ``tau_k`` it is
FedAvg. The normalized updates go through the setup's aggregator as models
``x + (y_k - x) / tau_k`` (so clipping, DP noise and robust rules act on what is averaged);
``tau_eff`` is reduced alongside as a weighted diagnostic. Empty clients (``tau_k = 0``:
padding, clients lost to the system) have weight 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import Algorithm, AlgorithmEntry, ClientSetup, client_weight


@struct.dataclass
class FedNovaState:
  params: dict
  aggregator_state: Any = ()


def fednova(setup: ClientSetup) -> Algorithm:
  """FedNova's normalized averaging (module docstring), server step size 1.

  Args:
    setup: client training (plain local SGD: ``tau_k`` is the step count), executor and
      aggregator.

  Returns:
    An ``Algorithm`` with metrics ``train_loss`` and ``effective_steps`` (``tau_eff``).
  """
  train = setup.local_trainer()

  def contribution(params, x, y, num_examples, key, context, step_limit):
    trained, result = train(params, x, y, num_examples, key, None, step_limit)
    steps = jnp.maximum(result.num_steps, 1).astype(jnp.float32)
    normalized = jax.tree.map(lambda t, p: p + (t - p) / steps, trained, params)
    weight = client_weight(num_examples, setup.weighting)
    return normalized, weight, (weight * result.mean_loss, weight * result.num_steps)

  reduce_cohort = setup.cohort_reduce(contribution)

  def init(key):
    return FedNovaState(setup.init_params(key), setup.aggregator.init(setup.params_shape))

  def train_and_reduce(carry):
    state = carry["state"]
    reduction = reduce_cohort(state.params, carry["cohort"], carry["key"], state.aggregator_state)
    return {**carry, "reduction": reduction}

  def normalized_step(carry):
    """``x <- x + tau_eff (A(normalized) - x)``."""
    state, reduction = carry["state"], carry["reduction"]
    total = jnp.maximum(reduction.total_weight, jnp.finfo(jnp.float32).tiny)
    weighted_loss, weighted_steps = reduction.extras
    effective_steps = weighted_steps / total
    params = jax.tree.map(
      lambda p, mean: p + effective_steps * (mean - p), state.params, reduction.aggregate
    )
    metrics = {"train_loss": weighted_loss / total, "effective_steps": effective_steps}
    return {"state": FedNovaState(params, reduction.aggregator_state), "metrics": metrics}

  round_fn = phases.Phases(phases.clients(train_and_reduce), phases.server(normalized_step))

  return Algorithm(init, round_fn, global_params=lambda state: state.params)


ENTRY = AlgorithmEntry(
  lambda setup, options, config: fednova(setup),
  any_cohort_size=True,
  aggregated_uploads=True,
  cohort_reduced=True,
)
