"""FedGen: data-free knowledge distillation for heterogeneous federated learning (Zhu, Hong and
Zhou, ICML 2021), a baseline of the FedSND comparison.

Each round, with ``G`` the conditional feature generator of ``ops.generator`` and ``p`` the
cohort's label distribution (clients share their label counts, as in the paper):

1. clients train from the global model on
   ``CE(f(x), y) + alpha * mean_i CE(head(G(z_i, y_i)), y_i)``, labels ``y_i ~ p`` and noise
   ``z_i ~ N(0, I)`` drawn afresh at every step (a stochastic objective), ``G`` the generator
   as the server last trained it (fixed during local training);
2. the server aggregates the models (the setup's aggregator), then trains ``G`` for
   ``generator_steps`` Adam steps on ``ops.generator.label_weighted_ensemble_loss`` of the
   cohort's trained heads, on batches of labels drawn from ``p``; the generator and its Adam
   state persist across rounds.

Left out: the paper's diversity loss on the generator and its clients' second term (the KL
between a client's outputs on real inputs and on generated features of the same labels): this
is FedGen's core, the generator as an inductive bias that carries other clients' knowledge of
labels a client lacks into its head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
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
from fedjax_lab.checks import require
from fedjax_lab.ops.generator import (
  apply_head,
  generate,
  init_generator,
  label_counts,
  label_weighted_ensemble_loss,
  sample_labels_and_noise,
)
from fedjax_lab.ops.losses import masked_mean, per_example_cross_entropy

GENERATOR_STREAM = 0x6E7  # fold_in constant: the server's generator batches


@struct.dataclass
class FedGenState:
  params: dict
  generator: dict
  generator_opt_state: Any
  aggregator_state: Any = ()


@dataclasses.dataclass(frozen=True)
class FedGenConfig:
  """FedGen's options (``algorithm.fedgen``)."""

  generated_weight: float = 1.0  # alpha of the clients' generated-feature term
  generated_per_step: int = 32  # generated samples in each local step
  noise_dim: int = 32
  generator_hidden: int = 256
  generator_steps: int = 20  # server Adam steps per round
  generator_learning_rate: float = 1e-3
  generator_batch: int = 64

  def __post_init__(self):
    p = "algorithm.fedgen."
    require(self.generated_weight >= 0, p + "generated_weight", ">= 0", self.generated_weight)
    for name in (
      "generated_per_step",
      "noise_dim",
      "generator_hidden",
      "generator_steps",
      "generator_batch",
    ):
      require(getattr(self, name) >= 1, p + name, ">= 1", getattr(self, name))
    require(
      self.generator_learning_rate > 0,
      p + "generator_learning_rate",
      "> 0",
      self.generator_learning_rate,
    )


def generated_feature_objective(apply_fn, num_classes: int, options: FedGenConfig):
  """``objective(params, x, y, mask, (generator, label_distribution), key)`` (stochastic):
  masked CE on the batch plus ``generated_weight`` times the mean CE of ``params['head']`` on
  ``generated_per_step`` generated features (no gradient into the generator)."""

  def objective(params, x, y, mask, context, key):
    generator, distribution = context
    loss = masked_mean(per_example_cross_entropy(apply_fn(params, x), y), mask)
    labels, z = sample_labels_and_noise(
      key, distribution, options.generated_per_step, options.noise_dim
    )
    features = jax.lax.stop_gradient(generate(generator, z, labels, num_classes))
    generated_loss = per_example_cross_entropy(apply_head(params["head"], features), labels)
    return loss + options.generated_weight * generated_loss.mean()

  return objective


def generator_trainer(options: FedGenConfig, num_classes: int):
  """``train(generator, opt_state, heads [M, ...], counts [M, C], key) -> (generator,
  opt_state, (loss before, loss after))``: the server step of the module docstring; the two
  losses on one batch held out of the steps."""
  optimizer = optax.adam(options.generator_learning_rate)

  def train(generator, opt_state, heads, counts, key):
    distribution = counts.sum(axis=0) / counts.sum()

    def loss(params, batch_key):
      labels, z = sample_labels_and_noise(
        batch_key, distribution, options.generator_batch, options.noise_dim
      )
      features = generate(params, z, labels, num_classes)
      logits = jax.vmap(apply_head, in_axes=(0, None))(heads, features)
      return label_weighted_ensemble_loss(logits, labels, counts)

    def step(index, carry):
      params, state = carry
      grads = jax.grad(loss)(params, jax.random.fold_in(key, index))
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    trained, opt_state = jax.lax.fori_loop(0, options.generator_steps, step, (generator, opt_state))
    held_out = jax.random.fold_in(key, options.generator_steps)
    return trained, opt_state, (loss(generator, held_out), loss(trained, held_out))

  return optimizer, train


def fedgen(setup: ClientSetup, options: FedGenConfig) -> Algorithm:
  """FedGen (module docstring).

  Args:
    setup: client training, executor and aggregator; the model a classifier whose read-out
      layer is a dense layer named ``head``.
    options: a ``FedGenConfig``.

  Returns:
    An ``Algorithm`` whose state holds the global model, the generator and its Adam state.
  """
  logits_shape, features_shape = jax.eval_shape(
    setup.model.apply_with_features, setup.params_shape, setup.sample_x
  )
  require(
    len(logits_shape.shape) == 2,
    "model.name",
    "a classifier with logits [batch, classes] for fedgen",
    setup.model.name,
  )
  num_classes, feature_dim = logits_shape.shape[-1], features_shape.shape[-1]
  train_cohort = setup.cohort_trainer(
    None,
    params_axis=None,
    context_axis=None,
    data_loss=generated_feature_objective(setup.train_apply, num_classes, options),
    stochastic=True,
  )
  optimizer, train_generator = generator_trainer(options, num_classes)

  def init(key):
    params_key, generator_key = jax.random.split(key)
    generator = init_generator(
      generator_key, options.noise_dim, num_classes, options.generator_hidden, feature_dim
    )
    return FedGenState(
      setup.init_params(params_key),
      generator,
      optimizer.init(generator),
      setup.aggregator.init(setup.params_shape),
    )

  def label_distribution(carry):
    counts = label_counts(carry["cohort"].y, carry["cohort"].num_examples, num_classes)
    return {**carry, "counts": counts, "distribution": counts.sum(axis=0) / counts.sum()}

  def train(carry):
    state = carry["state"]
    context = (state.generator, carry["distribution"])
    trained, result = train_cohort(state.params, carry["cohort"], carry["key"], context)
    return {**carry, "trained": trained, "result": result}

  def aggregate_and_train_generator(carry):
    """The models' aggregate, and the generator's steps on the uploaded heads (a
    ``fori_loop``: one program under every strategy)."""
    state, trained, key = carry["state"], carry["trained"], carry["key"]
    weights = client_weights(carry["cohort"], setup.weighting)
    params, aggregator_state = aggregate_models(
      setup, trained, weights, state.params, state.aggregator_state, key
    )
    generator, opt_state, (before, after) = train_generator(
      state.generator,
      state.generator_opt_state,
      trained["head"],
      carry["counts"],
      jax.random.fold_in(key, GENERATOR_STREAM),
    )
    metrics = training_metrics(carry["result"], trained, weights)
    metrics.update(generator_loss_before=before, generator_loss_after=after)
    state = FedGenState(params, generator, opt_state, aggregator_state)
    return {"state": state, "metrics": metrics}

  round_fn = phases.Phases(
    phases.server(label_distribution),
    phases.clients(train),
    phases.server(aggregate_and_train_generator),
  )

  return Algorithm(init, round_fn, global_params=lambda state: state.params)


ENTRY = AlgorithmEntry(
  lambda setup, options, config: fedgen(setup, options),
  FedGenConfig,
  single_labels=True,
)
