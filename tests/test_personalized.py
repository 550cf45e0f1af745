"""Personalized baselines: FedPer, FedRep, LG-FedAvg, FedBN (``partial_personalization``),
Ditto and APFL. Each against a plain per-client reference loop where it changes local
training, its limits (Ditto at lambda 0 is Local-only beside FedAvg; APFL at alpha 0 is
FedAvg), and its defining effect on a label-skewed federation."""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

from fedjax_lab.algorithms import ALGORITHMS
from fedjax_lab.algorithms.apfl import APFLConfig, apfl
from fedjax_lab.algorithms.ditto import DittoConfig, ditto
from fedjax_lab.algorithms.fedopt import fedopt
from fedjax_lab.algorithms.local_only import local_only
from fedjax_lab.algorithms.partial_personalization import partial_personalization
from fedjax_lab.config import load_config
from fedjax_lab.models import build_model
from fedjax_lab.models.vision import MLPOptions
from fedjax_lab.ops import adaptive_aggregation as ala
from fedjax_lab.ops import personalization
from fedjax_lab.runner import run

LOCAL = dict(lr=0.1, momentum=0.0, batch_size=8, epochs=1)
COHORTS = [np.array([0, 1, 2]), np.array([1, 3, 4]), np.array([0, 2, 5])]


def _rounds(algorithm, data, rounds=3):
  state = algorithm.init(jax.random.key(0))
  step = jax.jit(algorithm.round)
  for r in range(rounds):
    state, _ = step(state, data.cohort(COHORTS[r]), jax.random.key(100 + r))
  return state


def _reference_kwargs(data):
  return dict(LOCAL, max_examples=data.max_examples)


def test_split_and_merge_are_inverse_and_the_parts_are_what_they_name():
  params = {"dense0": {"kernel": 1, "bias": 2}, "head": {"kernel": 3, "bias": 4},
            "block": {"norm0": {"scale": 5, "bias": 6}, "conv": {"kernel": 7}}}  # fmt: skip
  shared, head = personalization.split(params, personalization.head_layers)
  assert head == {"head": {"kernel": 3, "bias": 4}} and "head" not in shared
  assert personalization.merge(shared, head) == params
  _, norms = personalization.split(params, personalization.normalization_layers)
  assert norms == {"block": {"norm0": {"scale": 5, "bias": 6}}}
  body, _ = personalization.split(params, personalization.body_layers)
  assert body == {"head": {"kernel": 3, "bias": 4}}  # LG-FedAvg shares the head only


def test_fedper_matches_a_per_client_reference_loop(tiny_federation):
  setup = reference.mlp_setup(tiny_federation)
  state = _rounds(partial_personalization(setup, "head"), tiny_federation)
  apply, kwargs = setup.model.apply, _reference_kwargs(tiny_federation)
  params = setup.init_params(jax.random.key(0))
  body, head0 = personalization.split(params, personalization.head_layers)
  heads = {k: head0 for k in range(tiny_federation.num_clients)}
  for r, ids in enumerate(COHORTS):
    cohort = tiny_federation.cohort(ids)
    keys = jax.random.split(jax.random.key(100 + r), len(ids))
    bodies, weights = [], []
    for i, (k, n) in enumerate(zip(ids, cohort.num_examples)):
      start = personalization.merge(body, heads[int(k)])
      trained, _ = reference.local_sgd(apply, start, cohort.x[i, :n], cohort.y[i, :n], keys[i],
                                       **kwargs)  # fmt: skip
      bodies.append(personalization.split(trained, personalization.head_layers)[0])
      heads[int(k)] = personalization.split(trained, personalization.head_layers)[1]
      weights.append(n)
    body = reference._mean(bodies, weights)
  chex.assert_trees_all_close(state.shared, body, atol=1e-5)
  for k, head in heads.items():
    chex.assert_trees_all_close(jax.tree.map(lambda l: l[k], state.personal), head, atol=1e-5)


def test_fedrep_trains_the_head_with_the_body_fixed_then_the_body(tiny_federation):
  setup = reference.mlp_setup(tiny_federation)
  state = _rounds(partial_personalization(setup, "head", head_epochs=2), tiny_federation, 1)
  apply, kwargs = setup.model.apply, _reference_kwargs(tiny_federation)
  body, head = personalization.split(
    setup.init_params(jax.random.key(0)), personalization.head_layers
  )
  cohort = tiny_federation.cohort(COHORTS[0])
  keys = jax.random.split(jax.random.key(100), 3)
  bodies = []
  for i, n in enumerate(cohort.num_examples):
    head_key, body_key = jax.random.split(keys[i])
    x, y = cohort.x[i, :n], cohort.y[i, :n]
    on_head = lambda h, batch: apply(personalization.merge(body, h), batch)
    new_head, _ = reference.local_sgd(on_head, head, x, y, head_key, **{**kwargs, "epochs": 2})
    on_body = lambda b, batch: apply(personalization.merge(b, new_head), batch)
    new_body, _ = reference.local_sgd(on_body, body, x, y, body_key, **kwargs)
    bodies.append(new_body)
    got = jax.tree.map(lambda l: l[int(COHORTS[0][i])], state.personal)
    chex.assert_trees_all_close(got, new_head, atol=1e-5)
  chex.assert_trees_all_close(state.shared, reference._mean(bodies, cohort.num_examples), atol=1e-5)


def test_ditto_at_lambda_zero_is_local_training_beside_fedavg(tiny_federation):
  setup = reference.mlp_setup(tiny_federation)
  state = _rounds(ditto(setup, DittoConfig(lam=0.0)), tiny_federation)
  local = _rounds(local_only(setup), tiny_federation)
  fedavg = _rounds(fedopt(setup, optax.sgd(1.0)), tiny_federation)
  chex.assert_trees_all_close(state.personal, local.client_params, atol=1e-6)
  chex.assert_trees_all_close(state.params, fedavg.params, atol=1e-5)


def test_ditto_personal_step_is_pulled_toward_the_round_start_global_model(tiny_federation):
  setup = reference.mlp_setup(tiny_federation)
  lam = 0.5
  state = _rounds(ditto(setup, DittoConfig(lam=lam)), tiny_federation, 1)
  params = setup.init_params(jax.random.key(0))
  cohort = tiny_federation.cohort(COHORTS[0])
  keys = jax.random.split(jax.random.key(100), 3)
  pull = lambda v: jax.tree.map(lambda a, b: lam * (a - b), v, params)
  for i, n in enumerate(cohort.num_examples):
    x, y = cohort.x[i, :n], cohort.y[i, :n]
    kwargs = _reference_kwargs(tiny_federation)
    expected, _ = reference.local_sgd(
      setup.model.apply, params, x, y, keys[i], grad_extra=pull, **kwargs
    )
    got = jax.tree.map(lambda l: l[int(COHORTS[0][i])], state.personal)
    chex.assert_trees_all_close(got, expected, atol=1e-5)


def test_ditto_lambda_moves_personal_models_from_local_to_global(tiny_federation):
  setup = reference.mlp_setup(tiny_federation)

  def distance(lam):
    state = _rounds(ditto(setup, DittoConfig(lam=lam)), tiny_federation)
    gaps = jax.tree.map(lambda v, w: jnp.sum((v - w[None]) ** 2), state.personal, state.params)
    return float(sum(jax.tree.leaves(gaps)))

  distances = [distance(lam) for lam in (0.0, 0.5, 5.0)]
  assert distances[0] > distances[1] > distances[2]


def test_apfl_at_alpha_zero_is_fedavg_and_learns_alpha_otherwise(tiny_federation):
  setup = reference.mlp_setup(tiny_federation)
  fixed = apfl(setup, APFLConfig(alpha=0.0, adaptive_alpha=False), 0.1)
  state = _rounds(fixed, tiny_federation)
  fedavg = _rounds(fedopt(setup, optax.sgd(1.0)), tiny_federation)
  chex.assert_trees_all_close(state.params, fedavg.params, atol=1e-5)
  personal = fixed.personal_params(state)
  chex.assert_trees_all_close(personal, jax.tree.map(lambda w: jnp.broadcast_to(w, (6, *w.shape)),
                                                     fedavg.params), atol=1e-5)  # fmt: skip
  learned = _rounds(
    apfl(setup, APFLConfig(alpha=0.25, alpha_learning_rate=0.01), 0.1), tiny_federation
  )
  sampled = np.unique(np.concatenate(COHORTS))
  assert np.all(np.asarray(learned.alpha)[sampled] != 0.25)
  assert np.all((np.asarray(learned.alpha) >= 0) & (np.asarray(learned.alpha) <= 1))


def test_lg_fedavg_sends_the_head_only_and_keeps_the_body(tiny_federation):
  setup = reference.mlp_setup(tiny_federation)
  algorithm = partial_personalization(setup, "body")
  assert set(algorithm.upload) == {"head"}
  state = _rounds(algorithm, tiny_federation)
  bodies = state.personal["dense0"]["kernel"]
  assert not np.allclose(bodies[0], bodies[1])  # personal bodies drift apart
  unsampled = algorithm.init(jax.random.key(0)).personal  # no client is left unsampled here
  assert not np.allclose(bodies[0], unsampled["dense0"]["kernel"][0])


def test_fedbn_keeps_normalization_layers_per_client_and_is_refused_without_them(
  tmp_path, tiny_federation
):
  message = (
    "model.name must be a model with normalization layers and others for algorithm.name=fedbn"
  )
  config = load_config(None, ["data.source=digits", "algorithm.name=fedbn", "logging.writers=[]",
                              f"out_dir={tmp_path / 'a'}"])  # fmt: skip
  with pytest.raises(ValueError, match=message):
    run(config, progress=False)
  model = build_model("mlp", 10, options=MLPOptions(normalization="layer"))
  setup = dataclasses.replace(reference.mlp_setup(tiny_federation), model=model)
  state = _rounds(partial_personalization(setup, "normalization"), tiny_federation)
  assert set(state.personal) == {"norm0", "norm1"} and "norm0" not in state.shared
  scales = np.asarray(state.personal["norm0"]["scale"])
  assert not np.allclose(scales[0], scales[1])  # each client's own normalization


SHARDS = ["data.source=digits", "data.num_clients=10", "data.partition=shards",
          "data.test_fraction=0.25", "cohort_size=5", "rounds=12", "eval_every=12",
          "checkpoint_every=0", "logging.writers=[]", "local.learning_rate=0.05",
          "local.epochs=2"]  # fmt: skip


@functools.cache
def _shards_accuracy(name: str, folder: str) -> float:
  """Clients' mean accuracy of the models they use after 12 rounds on two-class shards."""
  config = load_config(None, SHARDS + [f"algorithm.name={name}", f"out_dir={folder}/{name}"])
  return run(config, progress=False).metrics[-1]["client_accuracy_mean"]


@pytest.fixture(scope="module")
def shards_folder(tmp_path_factory):
  return str(tmp_path_factory.mktemp("shards"))


@pytest.mark.slow
@pytest.mark.parametrize(
  "method", ["fedper", "fedrep", "ditto", "apfl", "lg_fedavg", "pfedme", "fedala"]
)
def test_personalization_beats_the_global_model_on_two_classes_per_client(shards_folder, method):
  """Shards of two classes per client: each method's clients' own models beat FedAvg's
  global model on the clients' own test splits (the effect personalization exists for)."""
  fedavg = _shards_accuracy("fedavg", shards_folder)
  personalized = _shards_accuracy(method, shards_folder)
  assert personalized > fedavg + 0.1, (method, personalized, fedavg)


def test_every_personalized_method_sends_only_through_the_aggregator():
  names = ("fedper", "fedrep", "lg_fedavg", "fedbn", "ditto", "apfl", "pfedme", "per_fedavg")
  for name in names + ("fedala",):
    entry = ALGORITHMS.get(name)
    assert entry.aggregated_uploads and entry.keeps_lost_clients
  dp = ["privacy.noise_multiplier=1.0", "aggregation.clip_norm=1.0", "algorithm.weighting=uniform"]
  config = load_config(None, ["data.source=digits", "algorithm.name=ditto", *dp])
  assert config.privacy.noise_multiplier == 1.0  # DP is accepted: the uploads are aggregated


def _least_squares(params, x, y, mask, context):
  """``0.5 * mean((x @ w - y)^2)`` over the real rows: Hessian ``x^T x / n``."""
  residual = (x @ params["w"] - y) * mask
  return 0.5 * jnp.sum(residual**2) / jnp.maximum(mask.sum(), 1)


def test_per_fedavg_meta_gradients_are_first_order_maml_and_exact_maml():
  from fedjax_lab.algorithms.per_fedavg import meta_objective

  rng = np.random.default_rng(0)
  x, y = jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.normal(size=8))
  mask, params, alpha = jnp.ones(8, bool), {"w": jnp.asarray(rng.normal(size=3))}, 0.1
  first, second = (x[:4], y[:4], mask[:4]), (x[4:], y[4:], mask[4:])
  inner = jax.grad(_least_squares)(params, *first, None)["w"]
  temp = {"w": params["w"] - alpha * inner}
  outer = jax.grad(_least_squares)(temp, *second, None)["w"]
  hessian = first[0].T @ first[0] / 4
  fo = jax.grad(meta_objective(_least_squares, alpha, True))(params, x, y, mask, None)["w"]
  exact = jax.grad(meta_objective(_least_squares, alpha, False))(params, x, y, mask, None)["w"]
  np.testing.assert_allclose(fo, outer, rtol=1e-5)
  np.testing.assert_allclose(exact, (np.eye(3) - alpha * hessian) @ outer, rtol=1e-5)


def test_pfedme_local_step_is_the_inner_solve_then_a_moreau_envelope_step():
  from fedjax_lab.algorithms.pfedme import PFedMeConfig, pfedme_objective

  rng = np.random.default_rng(1)
  x, y, mask = jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=6)), jnp.ones(6)
  options, eta = PFedMeConfig(lam=2.0, personal_learning_rate=0.05, inner_steps=3), 0.1
  w, theta = {"w": jnp.asarray(rng.normal(size=3))}, {"w": jnp.asarray(rng.normal(size=3))}
  expected_theta = theta["w"]
  for _ in range(3):  # theta <- theta - lr * (grad f(theta) + lam (theta - w))
    grad = jax.grad(_least_squares)({"w": expected_theta}, x, y, mask, None)["w"]
    expected_theta = expected_theta - 0.05 * (grad + 2.0 * (expected_theta - w["w"]))
  expected_w = w["w"] - eta * 2.0 * (w["w"] - expected_theta)
  objective = pfedme_objective(_least_squares, options, eta)
  value, grads = jax.value_and_grad(objective)((w, theta), x, y, mask, None)
  updates, _ = optax.sgd(eta).update(grads, optax.sgd(eta).init((w, theta)))
  new_w, new_theta = optax.apply_updates((w, theta), updates)
  np.testing.assert_allclose(new_theta["w"], expected_theta, rtol=1e-5)
  np.testing.assert_allclose(new_w["w"], expected_w, rtol=1e-5)
  np.testing.assert_allclose(
    value, _least_squares({"w": expected_theta}, x, y, mask, None), rtol=1e-5
  )


def test_pfedme_needs_plain_sgd(tmp_path):
  config = load_config(None, ["data.source=digits", "algorithm.name=pfedme", "local.momentum=0.5",
                              "logging.writers=[]", f"out_dir={tmp_path}"])  # fmt: skip
  with pytest.raises(
    ValueError, match="local.optimizer must be sgd with local.momentum=0 for pfedme"
  ):
    run(config, progress=False)


def test_a_block_of_clients_models_is_built_without_the_federations(tiny_federation):
  """``personal_params_of`` (what evaluation uses) gives the rows of ``personal_params``."""
  setup = reference.mlp_setup(tiny_federation)
  ids = jnp.array([4, 1])
  for algorithm in (partial_personalization(setup, "head"), apfl(setup, APFLConfig(), 0.1)):
    state = _rounds(algorithm, tiny_federation, 2)
    every = jax.tree.map(lambda leaf: leaf[ids], algorithm.personal_params(state))
    chex.assert_trees_all_close(algorithm.personal_params_of(state, ids), every)


def test_ala_ops_blend_clip_and_pick_the_top_layers():
  g, l = {"a": jnp.array([1.0, 2.0])}, {"a": jnp.array([3.0, -2.0])}
  chex.assert_trees_all_close(ala.blend(g, l, {"a": jnp.ones(2)}), g)
  chex.assert_trees_all_close(ala.blend(g, l, {"a": jnp.zeros(2)}), l)
  chex.assert_trees_all_close(
    ala.blend(g, l, {"a": jnp.array([0.5, 0.25])})["a"], jnp.array([2.0, -1.0])
  )
  weights = {"a": jnp.array([0.9, 0.1, 0.5])}
  updates, _ = ala.unit_box_sgd(1.0).update({"a": jnp.array([-1.0, 1.0, 0.2])}, (), weights)
  chex.assert_trees_all_close(
    optax.apply_updates(weights, updates)["a"], jnp.array([1.0, 0.0, 0.3])
  )
  groups = ("stem", "block", "head")  # input to output; not the alphabet's order
  picks = [p for p in sorted(groups) if ala.top_layers(groups, 2)(f"{p}/kernel")]
  assert picks == ["block", "head"]
  recent = jnp.array([1.0, 1.02, 0.99])
  assert ala.settled(recent, jnp.int32(3), 0.1) and not ala.settled(recent, jnp.int32(2), 0.1)
  assert not ala.settled(recent, jnp.int32(5), 0.001)


def _reference_ala(setup, g, l, w, x, y, key, eta, fraction, layers):
  """One epoch of ALA with the explicit gradient ``dL/dtheta * (g - l)``, clipped to [0, 1],
  over a random ``fraction`` of the real examples (the order the engine draws)."""
  n = len(y)
  order_key, epochs_key = jax.random.split(key)
  scores = np.asarray(jax.random.uniform(order_key, (setup.schedule.max_examples,)))
  chosen = np.argsort(scores[:n], kind="stable")[: int(np.ceil(fraction * n))]
  x, y = x[chosen], y[chosen]
  top = list(g)[-layers:]
  order = reference.epoch_order(jax.random.fold_in(epochs_key, 0), len(y), len(scores), 0)
  size = setup.schedule.batch_size

  def loss(theta, bx, by):
    logits = setup.model.apply(theta, bx)
    return optax.softmax_cross_entropy_with_integer_labels(logits, by).mean()

  for b in range(-(-len(y) // size)):
    batch = order[b * size : (b + 1) * size]
    theta = {**g, **{k: jax.tree.map(lambda gg, ll, ww: ll + (gg - ll) * ww, g[k], l[k], w[k])
                     for k in top}}  # fmt: skip
    grads = jax.grad(loss)(theta, x[batch], y[batch])
    w = {k: jax.tree.map(lambda ww, dd, gg, ll: np.clip(ww - eta * dd * (gg - ll), 0, 1),
                         w[k], grads[k], g[k], l[k]) for k in top}  # fmt: skip
  return w


@pytest.mark.parametrize("layers", [1, 2])
def test_ala_weights_follow_a_reference_loop_of_the_explicit_gradient(tiny_federation, layers):
  from fedjax_lab.algorithms.fedala import ADAPTED, FedALAConfig, adaptive_start

  setup = reference.mlp_setup(tiny_federation)
  options = FedALAConfig(learning_rate=0.5, sample_fraction=0.8, layers=layers)
  g = setup.init_params(jax.random.key(0))
  l = jax.tree.map(lambda p: p + 0.3 * jnp.sign(p), setup.init_params(jax.random.key(1)))
  top = list(g)[-layers:]
  w = {k: jax.tree.map(lambda p: jnp.full_like(p, 0.7), g[k]) for k in top}
  cohort, key = tiny_federation.cohort(np.array([0])), jax.random.key(5)
  n = int(cohort.num_examples[0])
  start = jax.jit(adaptive_start(setup, options))
  theta, weights, epochs = start(g, l, w, cohort.x[0], cohort.y[0], cohort.num_examples[0],
                                 key, jnp.int32(ADAPTED))  # fmt: skip
  expected = _reference_ala(setup, g, l, w, np.asarray(cohort.x[0, :n]),
                            np.asarray(cohort.y[0, :n]), key, 0.5, 0.8, layers)  # fmt: skip
  assert int(epochs) == 1
  chex.assert_trees_all_close(weights, expected, atol=1e-5)
  assert not np.allclose(weights[top[-1]]["kernel"], 0.7)  # the weights moved
  for name in g:  # lower layers are the global model's, the top ones the blend
    want = g[name] if name not in top else jax.tree.map(
      lambda gg, ll, ww: ll + (gg - ll) * ww, g[name], l[name], expected[name])  # fmt: skip
    chex.assert_trees_all_close(theta[name], want, atol=1e-5)


def test_ala_start_phase_runs_until_its_losses_settle_and_new_clients_take_the_global_model(
  tiny_federation,
):
  from fedjax_lab.algorithms.fedala import NEVER_TRAINED, TRAINED, FedALAConfig, adaptive_start

  setup = reference.mlp_setup(tiny_federation)
  g = setup.init_params(jax.random.key(0))
  l = setup.init_params(jax.random.key(1))
  w = jax.tree.map(jnp.ones_like, {"head": g["head"]})
  cohort = tiny_federation.cohort(np.array([0]))
  args = (cohort.x[0], cohort.y[0], cohort.num_examples[0], jax.random.key(3))

  def epochs(threshold, phase):
    options = FedALAConfig(threshold=threshold, patience=4, max_start_epochs=9)
    theta, _, ran = jax.jit(adaptive_start(setup, options))(g, l, w, *args, jnp.int32(phase))
    return int(ran), theta

  assert epochs(1e9, TRAINED)[0] == 4  # settled as soon as `patience` losses exist
  assert epochs(0.0, TRAINED)[0] == 9  # never settles: the cap
  ran, theta = epochs(0.0, NEVER_TRAINED)
  assert ran == 0
  chex.assert_trees_all_equal(theta, g)


def test_fedala_first_round_is_fedavg_and_lost_clients_keep_their_state(tiny_federation):
  from fedjax_lab.algorithms.fedala import ADAPTED, TRAINED, FedALAConfig, fedala

  setup = reference.mlp_setup(tiny_federation)
  method, avg = fedala(setup, FedALAConfig()), fedopt(setup, optax.sgd(1.0))
  state, key = method.init(jax.random.key(0)), jax.random.key(100)
  first = tiny_federation.cohort(COHORTS[0])
  state, _ = jax.jit(method.round)(state, first, key)
  fedavg_state, _ = jax.jit(avg.round)(avg.init(jax.random.key(0)), first, key)
  chex.assert_trees_all_close(state.params, fedavg_state.params, atol=1e-6)
  assert list(np.asarray(state.phase)) == [TRAINED] * 3 + [0] * 3
  lost = tiny_federation.cohort(np.array([0, 1]))
  lost = dataclasses.replace(lost, num_examples=np.array([0, lost.num_examples[1]]))
  after, _ = jax.jit(method.round)(state, lost, jax.random.key(7))
  row = lambda tree, k: jax.tree.map(lambda leaf: leaf[k], tree)
  chex.assert_trees_all_equal(row(after.local, 0), row(state.local, 0))
  chex.assert_trees_all_equal(row(after.weights, 0), row(state.weights, 0))
  assert int(after.phase[0]) == TRAINED and int(after.phase[1]) == ADAPTED
