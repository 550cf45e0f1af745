"""The algorithm contract and the client-side pieces every algorithm composes.

An algorithm is ``Algorithm(init, round)``: ``init(key) -> State`` and
``round(state, cohort, key) -> (State, metrics)``, pure functions over a pytree ``State``.
Everything else is optional: views of the state (the global model, per-client models, cluster
labels), the payloads one client receives and sends per round (byte counts are derived from
them), and ``host_phases`` for a round that picks its program on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_lab.algorithms.phases import Phases
from fedjax_lab.data import Cohort
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import (
  LocalSchedule,
  Objective,
  cross_entropy_objective,
  make_local_trainer,
)
from fedjax_lab.engine.precision import apply_in
from fedjax_lab.models import Model
from fedjax_lab.ops.aggregate import (
  client_sum,
  tree_broadcast,
  tree_gather,
  tree_scatter,
  weighted_mean,
)
from fedjax_lab.ops.aggregators import Aggregator, mean, with_feedback
from fedjax_lab.ops.communication import tree_bytes
from fedjax_lab.ops.divergence import mean_pairwise_cosine
from fedjax_lab.registry import NoOptions

Params = Any
# regularizer(params, context) -> scalar added to the local data loss
Regularizer = Callable[[Params, Any], jax.Array]

AGGREGATION_STREAM = 0xA66  # fold_in constant: the aggregator's key, apart from training keys
FEEDBACK_STREAM = 0xEFB  # the keys of the clients' compression under error feedback


class Algorithm(NamedTuple):
  """A federated algorithm: ``init`` and ``round`` (module docstring), plus optional views.

  ``global_params(state)``: the server model (None: there is none, as for Local-only).
  ``personal_params(state)``: the model each client would use, ``[num_clients, ...]`` (None:
  every client uses the global model). ``personal_params_of(state, client_ids)``: the models
  of those clients only, ``[len(client_ids), ...]``, for a method whose personal models are
  built from smaller state (a shared part and personal rows): evaluation then holds a block of
  models, not the federation's. ``client_clusters(state)``: each client's cluster label
  ``[num_clients]`` (clustering methods). ``download`` / ``upload``: the pytrees (arrays or
  ``jax.ShapeDtypeStruct``) one participating client receives / sends per round; None means
  one model. ``host_phases``: the round runs host-side logic between compiled phases, so the
  runner must not ``jit`` it whole (it compiles its phases itself). ``privacy(rounds)``: the
  privacy an algorithm with its own DP mechanism has spent after ``rounds`` rounds, as metrics
  (``{"privacy_epsilon": ...}``; host side).
  """

  init: Callable[[jax.Array], Any]
  round: Callable[[Any, Cohort, jax.Array], tuple[Any, dict]]
  global_params: Optional[Callable[[Any], Params]] = None
  personal_params: Optional[Callable[[Any], Params]] = None
  client_clusters: Optional[Callable[[Any], jax.Array]] = None
  download: Any = None
  upload: Any = None
  host_phases: bool = False
  privacy: Optional[Callable[[int], dict]] = None
  personal_params_of: Optional[Callable[[Any, Any], Params]] = None


@dataclasses.dataclass(frozen=True)
class ClientSetup:
  """Everything about client-side training and aggregation that algorithms share.

  ``aggregator`` reduces cohort contributions (default: the weighted mean; ``ops.aggregators``);
  ``client_groups`` are the federation's known latent groups (``[num_clients]``) if any;
  ``client_paths`` the natural clients' names (``/``-separated: their place in a federation
  tree, ``data.tree``) if the partition is natural; ``weighting`` how a client's contribution
  is weighted (``client_weight``: its example count, or 1 with ``uniform``).
  """

  model: Model
  sample_x: np.ndarray  # [1, ...] one example, for parameter shapes
  optimizer: optax.GradientTransformation
  schedule: LocalSchedule
  executor: Executor
  num_clients: int
  unroll: bool = False
  compute_dtype: str = "float32"
  aggregator: Aggregator = dataclasses.field(default_factory=mean)
  client_groups: Optional[np.ndarray] = None
  client_paths: Optional[tuple[str, ...]] = None
  weighting: str = "num_examples"

  @property
  def train_apply(self):
    """``model.apply`` as training runs it: in ``compute_dtype`` (engine/precision.py)."""
    return apply_in(self.compute_dtype, self.model.apply)

  def init_params(self, key: jax.Array) -> Params:
    return self.model.init(key, self.sample_x)

  @functools.cached_property
  def layer_groups(self) -> tuple[str, ...]:
    """The model's top-level parameter subtrees, input to output (``Model.layer_groups``)."""
    return self.model.layer_groups(self.sample_x)

  @functools.cached_property
  def params_shape(self):
    """One model's parameters as ``jax.ShapeDtypeStruct``s (computed once, not traced)."""
    return jax.eval_shape(self.init_params, jax.random.key(0))

  def local_trainer(
    self,
    regularizer: Optional[Regularizer] = None,
    data_loss: Optional[Objective] = None,
    stochastic: bool = False,
  ):
    """One client's ``train(params, x, y, num_examples, key, context) -> (params,
    LocalResult)``. The local objective is ``data_loss`` (default: cross-entropy) plus
    ``regularizer``; ``stochastic``: ``data_loss`` takes a per-step key (``make_local_trainer``)."""
    data_loss = data_loss or cross_entropy_objective(self.train_apply)
    if regularizer is None:
      objective = data_loss
    else:

      def objective(params, x, y, mask, context, *step_key):
        return data_loss(params, x, y, mask, context, *step_key) + regularizer(params, context)

    return make_local_trainer(objective, self.optimizer, self.schedule, self.unroll, stochastic)

  def local_adaptation(self, epochs: int):
    """Local adaptation (fine-tuning; Yu, Bagdasaryan and Shmatikov 2020): every client's copy
    of a model after ``epochs`` epochs of local training on its own data, with the setup's
    optimizer and batch size, cross-entropy only.

    Args:
      epochs: local epochs of the adaptation, >= 1.

    Returns:
      ``adapt(params, x, y, num_examples, keys) -> [clients, ...]``: one shared ``params``,
      per-client data and keys; the clients' adapted models stacked, over the executor.
    """
    schedule = dataclasses.replace(self.schedule, epochs=epochs, steps=0)
    train = make_local_trainer(
      cross_entropy_objective(self.train_apply), self.optimizer, schedule, self.unroll
    )
    return self.executor.map(
      lambda params, x, y, n, key: train(params, x, y, n, key)[0], (None, 0, 0, 0, 0), sort_by=3
    )

  def cohort_trainer(
    self,
    regularizer: Optional[Regularizer],
    params_axis: Optional[int],
    context_axis: Optional[int],
    data_loss: Optional[Objective] = None,
    stochastic: bool = False,
  ):
    """``local_trainer`` over a cohort: ``train(params, cohort, key, context) -> (client_params,
    LocalResult)`` stacked ``[cohort, ...]``, client ``k`` training on its own data with the
    ``k``-th of ``round_keys(key, cohort)``. ``params_axis``/``context_axis``: 0 if per client,
    None if shared."""
    mapped = self.executor.map(
      self.local_trainer(regularizer, data_loss, stochastic),
      (params_axis, 0, 0, 0, 0, context_axis),
      sort_by=3,
    )

    def train(params, cohort: Cohort, key: jax.Array, context=None):
      keys = round_keys(key, cohort)
      return mapped(params, cohort.x, cohort.y, cohort.num_examples, keys, context)

    return train

  def step_limits(self, cohort: Cohort) -> jax.Array:
    """``[cohort]``: the most local steps each member takes (``cohort.steps``, or the
    schedule's ``max_steps`` for all)."""
    if cohort.steps is not None:
      return jnp.asarray(cohort.steps, jnp.int32)
    return jnp.full(cohort.client_ids.shape, self.schedule.max_steps, jnp.int32)

  def cohort_reduce(self, contribution: Callable):
    """Reduce the cohort's contributions through ``aggregator``.

    Args:
      contribution: ``contribution(params, x, y, num_examples, key, context[, step_limit])
        -> (model, weight, extras)`` for one client: it starts from the shared ``params``,
        reads its own data, training key and ``context``; if it has a ``step_limit``
        parameter, it is given the most local steps to take (``cohort.steps``'s row: a
        straggler's partial work; the schedule's ``max_steps`` when the cohort has none,
        which limits nothing); ``model`` goes through the aggregator with aggregation weight
        ``weight``; ``extras`` (diagnostics, already weighted as wanted) are summed over the
        cohort.

    Returns:
      ``reduce(params, cohort, key, aggregator_state, context=None) -> Reduction``: client
      ``k`` gets the ``k``-th of ``round_keys(key, cohort)`` and ``context``'s ``k``-th row
      (a pytree of ``[cohort, ...]`` leaves, or None); ``params`` is also the reference the
      aggregator measures updates from. With a sum form the cohort is reduced by
      ``Executor.map_sum`` (memory flat in the cohort); otherwise the contributions are
      stacked and ``aggregate`` applied. Chunked execution groups clients of similar
      example counts.
    """
    aggregator = self.aggregator
    if "step_limit" not in inspect.signature(contribution).parameters:
      contribution = _ignoring_step_limit(contribution)
    # params shared; x, y, num_examples, key, context, step_limit per client
    per_client = (None, 0, 0, 0, 0, 0, 0)
    by_examples = 3  # the position of num_examples in contribution's arguments
    if aggregator.feedback is not None:
      return self._reduce_with_feedback(contribution, per_client, by_examples)
    if aggregator.has_sum_form:

      def summand(state, aggregation_key, params, *client):
        model, weight, extras = contribution(params, *client)
        prepared = aggregator.prepare(model, params, state, aggregation_key)
        return jax.tree.map(lambda leaf: weight * leaf, prepared), weight, extras

      sums = self.executor.map_sum(summand, (None, 0) + per_client, 2 + by_examples)

      def reduce_by_sums(params, cohort, key, aggregator_state, context=None):
        client = (cohort.x, cohort.y, cohort.num_examples, round_keys(key, cohort))
        key = jax.random.fold_in(key, AGGREGATION_STREAM)
        aggregation_keys = jax.random.split(key, cohort.client_ids.shape[0])
        limits = self.step_limits(cohort)
        weighted, total, extras = sums(
          aggregator_state, aggregation_keys, params, *client, context, limits
        )
        value, state = aggregator.finalize(weighted, total, params, aggregator_state, key)
        return Reduction(value, total, extras, state)

      return reduce_by_sums

    stacked = self.executor.map(contribution, per_client, by_examples)

    def reduce_stack(params, cohort, key, aggregator_state, context=None):
      client = (cohort.x, cohort.y, cohort.num_examples, round_keys(key, cohort))
      models, weights, extras = stacked(params, *client, context, self.step_limits(cohort))
      value, aggregator_state = aggregator.aggregate(
        models, weights, params, aggregator_state, jax.random.fold_in(key, AGGREGATION_STREAM)
      )
      return Reduction(value, client_sum(weights), client_sum(extras), aggregator_state)

    return reduce_stack

  def _reduce_with_feedback(self, contribution: Callable, per_client: tuple, by_examples: int):
    """``cohort_reduce`` when each client compresses with error feedback
    (``ops.aggregators.error_feedback``): the cohort's residual rows are read from the
    aggregator state, each client sends its compressed contribution plus residual, the
    contributions are stacked and aggregated, and the new residuals written back."""
    aggregator = self.aggregator

    def sent(params, x, y, num_examples, key, context, step_limit, residual, compress_key):
      model, weight, extras = contribution(params, x, y, num_examples, key, context, step_limit)
      message, kept = with_feedback(
        aggregator.feedback, model, params, residual, num_examples > 0, compress_key
      )
      return message, weight, extras, kept

    stacked = self.executor.map(sent, per_client + (0, 0), by_examples)

    def reduce_with_feedback(params, cohort, key, aggregator_state, context=None):
      residuals = aggregator_state[1]
      client = (cohort.x, cohort.y, cohort.num_examples, round_keys(key, cohort))
      compress_keys = jax.random.split(
        jax.random.fold_in(key, FEEDBACK_STREAM), cohort.client_ids.shape[0]
      )
      rows = tree_gather(residuals, cohort.client_ids)
      limits = self.step_limits(cohort)
      models, weights, extras, kept = stacked(params, *client, context, limits, rows, compress_keys)
      value, state = aggregator.aggregate(
        models, weights, params, aggregator_state, jax.random.fold_in(key, AGGREGATION_STREAM)
      )
      state = (state[0], tree_scatter(residuals, cohort.client_ids, kept))
      return Reduction(value, client_sum(weights), client_sum(extras), state)

    return reduce_with_feedback


def _ignoring_step_limit(contribution: Callable) -> Callable:
  """A six-argument contribution (one that takes no step limit) called with seven."""

  def limited(params, x, y, num_examples, key, context, step_limit):
    del step_limit
    return contribution(params, x, y, num_examples, key, context)

  return limited


class Reduction(NamedTuple):
  """What ``ClientSetup.cohort_reduce`` returns: the aggregate, the cohort's total weight, the
  sum of the clients' extras and the aggregator's new state."""

  aggregate: Any
  total_weight: jax.Array
  extras: Any
  aggregator_state: Any


def payload_bytes(algorithm: Algorithm, setup: ClientSetup) -> tuple[int, int]:
  """Bytes one participating client receives and sends per round (``download``, ``upload``;
  None counts as one model)."""

  def count(payload):
    return tree_bytes(setup.params_shape if payload is None else payload)

  return count(algorithm.download), count(algorithm.upload)


def compiled_round(algorithm: Algorithm, executor: Executor, *, donate: bool = False):
  """``algorithm.round`` as one jitted program when the executor allows it and the algorithm
  has no host phases; a round of ``phases.Phases`` under ``loop`` with each server phase
  jitted (``Phases.compiled``); otherwise as it is. ``donate`` lets each round reuse the
  state's buffers."""
  if executor.jit_round and not algorithm.host_phases:
    return jax.jit(algorithm.round, donate_argnums=0 if donate else ())
  if isinstance(algorithm.round, Phases):
    return algorithm.round.compiled()
  return algorithm.round


def client_weight(num_examples, weighting: str) -> jax.Array:
  """Aggregation weight(s) from example count(s): the count (``num_examples``) or 1 for a
  non-empty client (``uniform``). Elementwise, so it serves one client or a cohort."""
  if weighting == "num_examples":
    return jnp.asarray(num_examples).astype(jnp.float32)
  return (jnp.asarray(num_examples) > 0).astype(jnp.float32)


def client_weights(cohort: Cohort, weighting: str) -> jax.Array:
  """Aggregation weights ``[cohort]`` (``client_weight`` of each member)."""
  return client_weight(cohort.num_examples, weighting)


def aggregate_models(setup: ClientSetup, models, weights, reference, aggregator_state, key):
  """``(aggregate, aggregator_state)``: the cohort's stacked ``models`` through the setup's
  aggregator, with ``reference`` the model the clients started from and the aggregation key
  drawn from the round's ``key``."""
  return setup.aggregator.aggregate(
    models, weights, reference, aggregator_state, jax.random.fold_in(key, AGGREGATION_STREAM)
  )


def model_and_copies(setup: ClientSetup, key: jax.Array) -> tuple[Params, Params, Any]:
  """``(params, copies, aggregator_state)``: an initial global model, every client's copy of
  it (``[num_clients, ...]``: the start of a per-client model such as Ditto's ``v_k``) and the
  aggregator's initial state."""
  params = setup.init_params(key)
  return (
    params,
    tree_broadcast(params, setup.num_clients),
    setup.aggregator.init(setup.params_shape),
  )


def personal_views(personal_params_of: Callable[[Any, Any], Params], num_clients: int) -> dict:
  """``Algorithm``'s ``personal_params`` and ``personal_params_of`` for a method that builds
  clients' models from smaller state: every client's models are those of all client ids."""
  return dict(
    personal_params=lambda state: personal_params_of(state, jnp.arange(num_clients)),
    personal_params_of=personal_params_of,
  )


def training_metrics(result, trained, weights) -> dict:
  """The round metrics of every method that trains client models: the weighted mean local
  loss and the mean pairwise cosine similarity of the trained models."""
  return {
    "train_loss": weighted_mean(result.mean_loss, weights),
    "client_cosine_similarity": mean_pairwise_cosine(trained),
  }


def round_keys(key: jax.Array, cohort: Cohort) -> jax.Array:
  """One training key per cohort member, ``[cohort]``."""
  return jax.random.split(key, cohort.client_ids.shape[0])


@dataclasses.dataclass(frozen=True)
class AlgorithmEntry:
  """What the registry (``algorithms.ALGORITHMS``) knows of a method.

  ``build(setup, options, config) -> Algorithm``: ``options`` is an instance of ``options``
  (the method's frozen config dataclass, validated on construction; the table
  ``algorithm.<name>`` of a config file), ``config`` the whole experiment config (read-only:
  ``config.server``, ``config.local``, ``config.cohort_size``; the weighting is
  ``setup.weighting``).
  ``every_client_each_round``: the method needs ``cohort_size == data.num_clients``.
  ``pooled``: the method trains one client holding the whole federation's training data.
  ``any_cohort_size``: the method keeps no per-client state and reduces the cohort only
  through ``setup.aggregator``, so cohorts of any size, padded with empty clients, are exact
  (``cohort_sampling=poisson``).
  ``keeps_lost_clients``: a client present in the cohort with no examples weighs 0 and leaves
  its per-client state as it was, so clients lost to the system (``ops/systems.py``) may stay
  in the cohort as empty clients (methods with ``any_cohort_size`` need not declare it).
  ``aggregated_uploads``: every message a client sends the server in a round is reduced only
  by one call of ``setup.aggregator`` over the cohort (``cohort_reduce`` or
  ``aggregate_models``), and nothing else of the client's reaches the server. Only then do
  central and local DP, update clipping, robust rules, secure aggregation and model-poisoning
  attacks act on all a client sends, so config validation refuses them for a method without it
  (the safe default: a new method is refused until it declares this).
  ``cohort_reduced``: every upload is reduced by ``ClientSetup.cohort_reduce`` alone, with a
  contribution that takes ``step_limit`` and passes it to local training (a straggler may
  send the steps it finished by the deadline, ``systems.stragglers=partial``); the reduction
  keeps each client's compression residual (``compression.error_feedback``).
  ``asynchronous``: the round reads ``cohort.seconds`` (when each dispatched client's result
  will reach the server) and reports the simulated clock itself as the metric
  ``simulated_seconds`` (``algorithms/asynchronous.py``); it needs timed devices.
  ``single_labels``: the method labels samples of its own by class (a generator's features,
  pseudo-samples), so it needs data with one class label per example: refused on token
  sequences and label sets.
  """

  build: Callable[[ClientSetup, Any, Any], Algorithm]
  options: type = NoOptions
  every_client_each_round: bool = False
  pooled: bool = False
  any_cohort_size: bool = False
  keeps_lost_clients: bool = False
  aggregated_uploads: bool = False
  cohort_reduced: bool = False
  asynchronous: bool = False
  single_labels: bool = False
