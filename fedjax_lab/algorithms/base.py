"""The algorithm contract and the client-side pieces every algorithm composes.

An algorithm is ``Algorithm(init, round, ...)``: ``init(key) -> State`` and
``round(state, cohort, key) -> (State, metrics)``, pure functions over a pytree ``State``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_lab.data import Cohort
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import (LocalSchedule, Objective, cross_entropy_objective,
                                     make_local_trainer)
from fedjax_lab.engine.precision import apply_in
from fedjax_lab.models import Model

Params = Any
# regularizer(params, context) -> scalar added to the local data loss
Regularizer = Callable[[Params, Any], jax.Array]

jax.tree_util.register_dataclass(
    Cohort, data_fields=["client_ids", "x", "y", "num_examples"], meta_fields=[])


class Algorithm(NamedTuple):
  """A federated algorithm as pure functions plus what the runner needs to know about it.

  ``global_params(state)`` is the server model (None if there is none, as for Local-only);
  ``personal_params(state)`` stacks the model each client would use ``[num_clients, ...]``
  (None: every client uses the global model). ``bytes_down`` / ``bytes_up`` are the bytes one
  participating client receives / sends per round, counted from the payload pytrees.
  ``client_clusters(state)`` (clustering algorithms only) gives each client's cluster label
  ``[num_clients]``, for comparing with known groups.
  """
  init: Callable[[jax.Array], Any]
  round: Callable[[Any, Cohort, jax.Array], tuple[Any, dict]]
  global_params: Callable[[Any], Optional[Params]]
  personal_params: Optional[Callable[[Any], Params]]
  bytes_down: int
  bytes_up: int
  jit_round: bool
  client_clusters: Optional[Callable[[Any], jax.Array]] = None


@dataclasses.dataclass(frozen=True)
class ClientSetup:
  """Everything about client-side training that algorithms share."""
  model: Model
  sample_x: np.ndarray              # [1, ...] one example, for parameter shapes
  optimizer: optax.GradientTransformation
  schedule: LocalSchedule
  executor: Executor
  num_clients: int
  unroll: bool = False
  compute_dtype: str = "float32"

  @property
  def train_apply(self):
    """``model.apply`` as training runs it: in ``compute_dtype`` (engine/precision.py)."""
    return apply_in(self.compute_dtype, self.model.apply)

  def init_params(self, key: jax.Array) -> Params:
    return self.model.init(key, self.sample_x)

  def local_trainer(self, regularizer: Optional[Regularizer] = None,
                    data_loss: Optional[Objective] = None):
    """One client's ``train(params, x, y, num_examples, key, context) -> (params,
    LocalResult)``. The local objective is ``data_loss`` (default: cross-entropy) plus
    ``regularizer``."""
    data_loss = data_loss or cross_entropy_objective(self.train_apply)
    if regularizer is None:
      objective = data_loss
    else:
      def objective(params, x, y, mask, context):
        return data_loss(params, x, y, mask, context) + regularizer(params, context)
    return make_local_trainer(objective, self.optimizer, self.schedule, self.unroll)

  def cohort_trainer(self, regularizer: Optional[Regularizer], params_axis: Optional[int],
                     context_axis: Optional[int], data_loss: Optional[Objective] = None):
    """``local_trainer`` over the cohort axis: ``train(params, x, y, num_examples, keys,
    context) -> (client_params, LocalResult)`` stacked. ``params_axis``/``context_axis``: 0 if
    per client, None if shared."""
    return self.executor.map(self.local_trainer(regularizer, data_loss),
                             (params_axis, 0, 0, 0, 0, context_axis))


def client_weight(num_examples, weighting: str) -> jax.Array:
  """Aggregation weight(s) from example count(s): the count (``num_examples``) or 1 for a
  non-empty client (``uniform``). Elementwise, so it serves one client or a cohort."""
  if weighting == "num_examples":
    return jnp.asarray(num_examples).astype(jnp.float32)
  return (jnp.asarray(num_examples) > 0).astype(jnp.float32)


def client_weights(cohort: Cohort, weighting: str) -> jax.Array:
  """Aggregation weights ``[cohort]`` (``client_weight`` of each member)."""
  return client_weight(cohort.num_examples, weighting)


def round_keys(key: jax.Array, cohort: Cohort) -> jax.Array:
  """One training key per cohort member, ``[cohort]``."""
  return jax.random.split(key, cohort.client_ids.shape[0])
