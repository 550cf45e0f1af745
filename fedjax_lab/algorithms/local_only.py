"""Local-only baseline: every client trains its own model on its own data, nothing is shared.

State holds ``[num_clients, ...]`` models, all starting from one initialization; a round
gathers the cohort's models, trains them, and scatters them back.
"""

from __future__ import annotations

from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  client_weights,
)
from fedjax_lab.ops.aggregate import tree_broadcast, tree_gather, tree_scatter, weighted_mean


@struct.dataclass
class LocalOnlyState:
  client_params: dict  # [num_clients, ...]


def local_only(setup: ClientSetup) -> Algorithm:
  """Local-only training (module docstring).

  Args:
    setup: client training and executor (no aggregation happens).

  Returns:
    An ``Algorithm`` with per-client models, no global model, nothing sent.
  """
  train_cohort = setup.cohort_trainer(None, params_axis=0, context_axis=None)

  def init(key):
    return LocalOnlyState(tree_broadcast(setup.init_params(key), setup.num_clients))

  def train(carry):
    state, cohort = carry["state"], carry["cohort"]
    start = tree_gather(state.client_params, cohort.client_ids)
    trained, result = train_cohort(start, cohort, carry["key"], None)
    return {**carry, "trained": trained, "result": result}

  def keep(carry):
    state, cohort, result = carry["state"], carry["cohort"], carry["result"]
    metrics = {
      "train_loss": weighted_mean(result.mean_loss, client_weights(cohort, "num_examples"))
    }
    kept = tree_scatter(state.client_params, cohort.client_ids, carry["trained"])
    return {"state": LocalOnlyState(kept), "metrics": metrics}

  round_fn = phases.Phases(phases.clients(train), phases.server(keep))

  return Algorithm(
    init, round_fn, personal_params=lambda state: state.client_params, download=(), upload=()
  )


# An empty client takes no step: its model is written back as it was.
ENTRY = AlgorithmEntry(lambda setup, options, config: local_only(setup), keeps_lost_clients=True)
