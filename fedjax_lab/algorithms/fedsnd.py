"""FedSND: server-side noise distillation plus client-side self-distillation (arXiv 2306.14443,
"Federated Learning on Non-iid Data via Local and Global Distillation"). No official code is
public; the choices the paper leaves open are settings (``FedSNDConfig``).

Client side: local training on ``CE(f(x), y) + lambda * T^2 * KL(p_T(teacher(x)) ||
p_T(f(x)))`` (``ops.distill``), the teacher being the model received this round (``global``,
frozen) or the client's own model from its previous participation (``previous``: per-client
state; the received model until a client has one), or the model being trained itself under
another dropout mask (``dropout``, R-Drop-like: student and teacher logits are two passes of
the same parameters, each with its own dropout mask of rate ``dropout_rate`` on the read-out
layer's input, ``Model.apply_with_dropout``, the teacher's without gradient; the CE is the
student pass's).

Server side, every round, for the cohort's trained models ``theta_1..theta_M``:
1. each client ``k``'s pseudo-samples ``X_k`` (``P`` inputs, Gaussian noise at the start,
   class-balanced labels) take ``noise_steps`` input-gradient steps so that ``theta_k``
   classifies them as their labels (``ops.pseudo_samples``); ``adaptive`` keeps them across
   rounds (refined by each new model), otherwise they restart from noise every round;
2. every model ``theta_j`` takes ``distill_steps`` SGD steps on the pseudo-samples of the other
   clients, towards their models' softened outputs (``pairwise``) or the ensemble of all other
   models (``ensemble``; ``ops.distill.server_distillation_targets``);
3. the distilled models are aggregated with FedAvg weights (the setup's aggregator: the
   weighted mean by default).
Input updates are mapped over clients and distillation over students with the setup's
executor, inside the jitted round.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  aggregate_models,
  client_weights,
  training_metrics,
)
from fedjax_lab.checks import one_of, require
from fedjax_lab.engine.precision import apply_in
from fedjax_lab.ops.aggregate import tree_gather_or, tree_scatter, weighted_mean
from fedjax_lab.ops.distill import kl_distillation, per_example_kl, server_distillation_targets
from fedjax_lab.ops.losses import masked_mean, per_example_cross_entropy
from fedjax_lab.ops.pseudo_samples import balanced_labels, refine_pseudo_samples

NOISE_STREAM = 0x501  # fold_in constant: fresh pseudo-samples when not adaptive
TEACHERS = ("global", "previous", "dropout")


@struct.dataclass
class FedSNDState:
  params: dict
  pseudo_x: jax.Array  # [num_clients, P, ...] each client's pseudo-samples
  previous_params: Any  # [num_clients, ...] last local model (teacher='previous'), or ()
  has_previous: jax.Array  # [num_clients] whether a client has trained before
  aggregator_state: Any = ()


@dataclasses.dataclass(frozen=True)
class FedSNDConfig:
  """FedSND's options (``algorithm.fedsnd``). Ablations: ``self_distill_weight = 0`` (noise
  distillation only), ``noise_distill = false`` (self-distillation only)."""

  self_distill_weight: float = 1.0  # lambda of the client's KL term (0: off)
  temperature: float = 2.0  # client-side distillation temperature
  teacher: str = "global"  # global (received model) | previous (own last model) | dropout
  dropout_rate: float = 0.2  # teacher='dropout': rate on the read-out layer's input
  noise_distill: bool = True  # the server-side step
  pseudo_per_client: int = 20  # pseudo-samples kept per client
  noise_steps: int = 20  # input-gradient (Adam) steps per round
  noise_learning_rate: float = 0.1
  tv_weight: float = 0.0  # total-variation prior on image pseudo-samples
  adaptive: bool = True  # keep pseudo-samples across rounds (else fresh noise)
  distill_steps: int = 10  # server SGD steps per client model
  distill_learning_rate: float = 0.01
  distill_mode: str = "pairwise"  # pairwise | ensemble
  server_temperature: float = 2.0

  def __post_init__(self):
    p = "algorithm.fedsnd."
    require(
      self.self_distill_weight >= 0, p + "self_distill_weight", ">= 0", self.self_distill_weight
    )
    require(self.temperature > 0, p + "temperature", "> 0", self.temperature)
    one_of(p + "teacher", self.teacher, TEACHERS)
    require(0 < self.dropout_rate < 1, p + "dropout_rate", "in (0, 1)", self.dropout_rate)
    require(self.pseudo_per_client >= 1, p + "pseudo_per_client", ">= 1", self.pseudo_per_client)
    require(self.noise_steps >= 1, p + "noise_steps", ">= 1", self.noise_steps)
    require(
      self.noise_learning_rate > 0, p + "noise_learning_rate", "> 0", self.noise_learning_rate
    )
    require(self.tv_weight >= 0, p + "tv_weight", ">= 0", self.tv_weight)
    require(self.distill_steps >= 1, p + "distill_steps", ">= 1", self.distill_steps)
    require(
      self.distill_learning_rate > 0, p + "distill_learning_rate", "> 0", self.distill_learning_rate
    )
    one_of(p + "distill_mode", self.distill_mode, ("pairwise", "ensemble"))
    require(self.server_temperature > 0, p + "server_temperature", "> 0", self.server_temperature)
    require(
      self.noise_distill or self.self_distill_weight > 0,
      p + "self_distill_weight",
      "> 0 when noise_distill is false (otherwise this is FedAvg)",
      self.self_distill_weight,
    )


def self_distillation_objective(apply_fn, weight: float, temperature: float):
  """``objective(params, x, y, mask, teacher_params)``: masked CE plus
  ``weight * T^2 * KL(p_T(teacher) || p_T(student))`` on the same batch."""

  def objective(params, x, y, mask, teacher_params):
    logits = apply_fn(params, x)
    loss = masked_mean(per_example_cross_entropy(logits, y), mask)
    if weight == 0:
      return loss
    teacher_logits = jax.lax.stop_gradient(apply_fn(teacher_params, x))
    return loss + weight * kl_distillation(logits, teacher_logits, temperature, mask)

  return objective


def dropout_self_distillation_objective(apply_with_dropout, weight: float, temperature: float):
  """``objective(params, x, y, mask, context, key)`` (stochastic; ``context`` unused): the
  student's logits ``apply_with_dropout(params, x, k1)`` and the teacher's
  ``stop_gradient(apply_with_dropout(params, x, k2))`` under two masks split from ``key``;
  masked CE of the student plus ``weight * T^2 * KL(p_T(teacher) || p_T(student))``."""

  def objective(params, x, y, mask, _context, key):
    student_key, teacher_key = jax.random.split(key)
    logits = apply_with_dropout(params, x, student_key)
    loss = masked_mean(per_example_cross_entropy(logits, y), mask)
    teacher_logits = jax.lax.stop_gradient(apply_with_dropout(params, x, teacher_key))
    return loss + weight * kl_distillation(logits, teacher_logits, temperature, mask)

  return objective


def dropout_apply(setup: ClientSetup, rate: float):
  """``apply(params, x, key)``: ``setup.model.apply_with_dropout`` at ``rate``, computing in
  the setup's ``compute_dtype``."""

  def apply(params, x, key):
    with_mask = lambda p, inputs: setup.model.apply_with_dropout(p, inputs, key, rate)
    return apply_in(setup.compute_dtype, with_mask)(params, x)

  return apply


def distill_one(apply_fn, options, unroll, params, targets, sample_weights, all_pseudo_x):
  """One model distilled towards the server's ``targets`` on every pseudo-sample: SGD on
  ``sum_k a_k mean_p T^2 KL(targets[k, p] || p_T(f(X_k, p))) / sum_k a_k``; returns the model
  and the loss before and after."""
  flat_x = all_pseudo_x.reshape((-1,) + all_pseudo_x.shape[2:])
  flat_targets = targets.reshape((flat_x.shape[0],) + targets.shape[-1:])
  per_sample = jnp.repeat(sample_weights, options.pseudo_per_client)
  per_sample = per_sample / jnp.maximum(per_sample.sum(), 1e-12)

  def loss(p):
    return (
      per_example_kl(apply_fn(p, flat_x), flat_targets, options.server_temperature) * per_sample
    ).sum()

  def step(p, _):
    value, grads = jax.value_and_grad(loss)(p)
    return jax.tree.map(lambda w, g: w - options.distill_learning_rate * g, p, grads), value

  params, losses = jax.lax.scan(
    step, params, None, length=options.distill_steps, unroll=bool(unroll)
  )
  return params, (losses[0], loss(params))


def noise_distillation(setup: ClientSetup, options, num_classes: int) -> tuple:
  """The server's noise distillation (steps 1-2 of the module docstring) as four phases over a
  carry holding ``trained`` ``[M, ...]``, ``pseudo_start`` ``[M, P, ...]`` and ``weights``
  ``[M]``: refine each model's pseudo-samples, every model's logits on all of them, the
  distillation targets, each model distilled towards them. They leave ``distilled``
  ``[M, ...]``, ``refined`` (the pseudo-samples) and ``distill_metrics``. The per-model maps
  go through the executor (client phases: one compiled call a model under ``loop``)."""
  apply_fn = setup.train_apply
  labels = balanced_labels(options.pseudo_per_client, num_classes)

  def refine_one(params, pseudo_x):
    return refine_pseudo_samples(
      apply_fn,
      params,
      pseudo_x,
      labels,
      steps=options.noise_steps,
      learning_rate=options.noise_learning_rate,
      tv_weight=options.tv_weight,
      unroll=setup.unroll,
    )

  def logits_on_all(params, all_pseudo_x):  # [M, P, ...] -> [M, P, C]
    return jax.vmap(lambda x: apply_fn(params, x))(all_pseudo_x)

  refine_all = setup.executor.map(refine_one, (0, 0))
  cross_logits = setup.executor.map(logits_on_all, (0, None))
  distill_model = functools.partial(distill_one, apply_fn, options, setup.unroll)
  distill_all = setup.executor.map(distill_model, (0, 0, 0, None))

  def refine(carry):
    refined, noise_losses = refine_all(carry["trained"], carry["pseudo_start"])
    return {**carry, "refined": refined, "noise_losses": noise_losses}

  def cross(carry):
    return {**carry, "logits": cross_logits(carry["trained"], carry["refined"])}  # [M, M, P, C]

  def targets(carry):
    targets, sample_weights = server_distillation_targets(
      carry["logits"], carry["weights"], options.server_temperature, options.distill_mode
    )
    return {**carry, "targets": targets, "sample_weights": sample_weights}

  def distill(carry):
    distilled, (before, after) = distill_all(
      carry["trained"], carry["targets"], carry["sample_weights"], carry["refined"]
    )
    noise_losses, weights = carry["noise_losses"], carry["weights"]
    metrics = {
      "noise_loss_first_step": noise_losses[:, 0].mean(),
      "noise_loss_last_step": noise_losses[:, -1].mean(),
      "server_distill_loss_before": weighted_mean(before, weights),
      "server_distill_loss_after": weighted_mean(after, weights),
    }
    return {**carry, "distilled": distilled, "distill_metrics": metrics}

  return (
    phases.clients(refine),
    phases.clients(cross),
    phases.server(targets),
    phases.clients(distill),
  )


def teacher_objective(setup: ClientSetup, options: FedSNDConfig):
  """The clients' data loss: CE plus the temperature-scaled KL to the teacher, the teacher a
  second dropout pass (``teacher=dropout``) or a model given as the context."""
  weight, temperature = options.self_distill_weight, options.temperature
  if options.teacher == "dropout":
    student = dropout_apply(setup, options.dropout_rate)
    return dropout_self_distillation_objective(student, weight, temperature)
  return self_distillation_objective(setup.train_apply, weight, temperature)


def initial_state(setup: ClientSetup, options: FedSNDConfig, key) -> FedSNDState:
  """The model, each client's pseudo-samples as standard normal noise, and (teacher
  ``previous``) a zero last model per client, none of them kept yet."""
  params_key, noise_key = jax.random.split(key)
  params = setup.init_params(params_key)
  input_shape = setup.sample_x.shape[1:]
  pseudo_x = jax.random.normal(
    noise_key, (setup.num_clients, options.pseudo_per_client) + input_shape, jnp.float32
  )
  previous = ()
  if options.teacher == "previous":
    zeros = lambda leaf: jnp.zeros((setup.num_clients,) + leaf.shape, leaf.dtype)
    previous = jax.tree.map(zeros, params)
  return FedSNDState(
    params,
    pseudo_x,
    previous,
    jnp.zeros(setup.num_clients, bool),
    setup.aggregator.init(setup.params_shape),
  )


def fedsnd(setup: ClientSetup, options: FedSNDConfig) -> Algorithm:
  """FedSND (module docstring).

  Args:
    setup: client training, executor and aggregator.
    options: a ``FedSNDConfig``.

  Returns:
    An ``Algorithm`` whose state holds the global model, every client's pseudo-samples and
    (teacher ``previous``) every client's last model.
  """
  num_classes = jax.eval_shape(setup.train_apply, setup.params_shape, setup.sample_x).shape[-1]
  per_client_teacher = options.teacher == "previous"
  data_loss = teacher_objective(setup, options)
  train_cohort = setup.cohort_trainer(
    None,
    params_axis=None,
    context_axis=0 if per_client_teacher else None,
    data_loss=data_loss,
    stochastic=options.teacher == "dropout",
  )
  server_steps = noise_distillation(setup, options, num_classes)

  def train(carry):
    """Local training with self-distillation from the teacher."""
    state, cohort = carry["state"], carry["cohort"]
    teacher = state.params
    if per_client_teacher:
      ids = cohort.client_ids
      teacher = tree_gather_or(state.previous_params, ids, state.has_previous, state.params)
    trained, result = train_cohort(state.params, cohort, carry["key"], teacher)
    weights = client_weights(cohort, setup.weighting)
    metrics = training_metrics(result, trained, weights)
    return {**carry, "trained": trained, "weights": weights, "metrics": metrics}

  def pseudo_start(carry):
    """Each model's pseudo-samples to refine: the client's kept ones, or fresh noise."""
    start = carry["state"].pseudo_x[carry["cohort"].client_ids]
    if not options.adaptive:
      key = jax.random.fold_in(carry["key"], NOISE_STREAM)
      start = jax.random.normal(key, start.shape, start.dtype)
    return {**carry, "pseudo_start": start}

  def aggregate(carry):
    state, cohort, key, weights = carry["state"], carry["cohort"], carry["key"], carry["weights"]
    ids, trained, metrics = cohort.client_ids, carry["trained"], dict(carry["metrics"])
    distilled, pseudo_x = trained, state.pseudo_x
    if options.noise_distill:
      distilled = carry["distilled"]
      pseudo_x = state.pseudo_x.at[ids].set(carry["refined"])
      metrics.update(carry["distill_metrics"])
    previous = state.previous_params
    if per_client_teacher:
      previous = tree_scatter(previous, ids, trained)
    params, aggregator_state = aggregate_models(
      setup, distilled, weights, state.params, state.aggregator_state, key
    )
    state = FedSNDState(
      params, pseudo_x, previous, state.has_previous.at[ids].set(True), aggregator_state
    )
    return {"state": state, "metrics": metrics}

  distillation = (phases.server(pseudo_start), *server_steps) if options.noise_distill else ()
  round_fn = phases.Phases(phases.clients(train), *distillation, phases.server(aggregate))

  init = functools.partial(initial_state, setup, options)
  return Algorithm(init, round_fn, global_params=lambda state: state.params)


ENTRY = AlgorithmEntry(
  lambda setup, options, config: fedsnd(setup, options),
  FedSNDConfig,
  single_labels=True,
)
