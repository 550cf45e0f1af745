"""The vmapped, chunked and looped engines against the plain reference loop, to 1e-5."""

import chex
import jax
import numpy as np
import optax
import pytest
import reference

from fedjax_lab.algorithms import ClientSetup, compiled_round
from fedjax_lab.algorithms.fedopt import fedopt
from fedjax_lab.algorithms.scaffold import scaffold
from fedjax_lab.data import FederatedData
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model

LOCAL = dict(lr=0.1, momentum=0.5, batch_size=4, epochs=2)
ROUNDS = 3
COHORTS = [np.array([0, 1, 2, 3]), np.array([1, 3, 4, 5]), np.array([0, 2, 4, 5])]
STRATEGY_CASES = [
  ("vmap", False),
  ("chunked", False),
  ("loop", False),
  ("loop/2", False),
  ("vmap", True),
]


def _executor(strategy):
  """``loop/k``: ``loop`` calls of k vmapped clients, two calls at once."""
  name, _, per_call = strategy.partition("/")
  return Executor(
    name, chunk_size=3, threads=2 if per_call else 1, clients_per_call=int(per_call or 1)
  )


def _setup(data, strategy, unroll):
  model = build_model("mlp", 10)
  return ClientSetup(
    model,
    data.train_x[0, :1],
    optax.sgd(LOCAL["lr"], momentum=LOCAL["momentum"]),
    LocalSchedule(LOCAL["batch_size"], data.max_examples, epochs=LOCAL["epochs"]),
    _executor(strategy),
    data.num_clients,
    unroll,
  )


def _reference_kwargs(data):
  return dict(LOCAL, max_examples=data.max_examples)


def _run(algorithm, data, strategy):
  state = algorithm.init(jax.random.key(0))
  round_fn = compiled_round(algorithm, _executor(strategy))
  for r in range(ROUNDS):
    state, _ = round_fn(state, data.cohort(COHORTS[r]), jax.random.key(100 + r))
  return state


@pytest.fixture(scope="module")
def reference_fedavg(tiny_federation):
  out = {}
  setup = _setup(tiny_federation, "vmap", False)
  for mu in (0.0, 0.3):
    params = setup.init_params(jax.random.key(0))
    for r in range(ROUNDS):
      params = reference.fedavg_round(
        setup.model.apply,
        params,
        tiny_federation.cohort(COHORTS[r]),
        jax.random.key(100 + r),
        prox_mu=mu,
        **_reference_kwargs(tiny_federation),
      )
    out[mu] = params
  return out


@pytest.mark.parametrize("strategy,unroll", STRATEGY_CASES)
@pytest.mark.parametrize("mu", [0.0, 0.3], ids=["fedavg", "fedprox"])
def test_fedavg_and_fedprox_match_reference(
  tiny_federation, reference_fedavg, strategy, unroll, mu
):
  algorithm = fedopt(_setup(tiny_federation, strategy, unroll), optax.sgd(1.0), prox_mu=mu)
  state = _run(algorithm, tiny_federation, strategy)
  chex.assert_trees_all_close(state.params, reference_fedavg[mu], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def reference_scaffold(tiny_federation):
  setup = _setup(tiny_federation, "vmap", False)
  params = setup.init_params(jax.random.key(0))
  c = jax.tree.map(np.zeros_like, params)
  controls = {k: c for k in range(tiny_federation.num_clients)}
  for r in range(ROUNDS):
    params, c, controls = reference.scaffold_round(
      setup.model.apply,
      params,
      c,
      controls,
      tiny_federation.cohort(COHORTS[r]),
      jax.random.key(100 + r),
      tiny_federation.num_clients,
      **_reference_kwargs(tiny_federation),
    )
  return params, c, controls


@pytest.mark.parametrize("strategy,unroll", STRATEGY_CASES)
def test_scaffold_matches_reference(tiny_federation, reference_scaffold, strategy, unroll):
  algorithm = scaffold(_setup(tiny_federation, strategy, unroll), client_learning_rate=LOCAL["lr"])
  state = _run(algorithm, tiny_federation, strategy)
  params, c, controls = reference_scaffold
  chex.assert_trees_all_close(state.params, params, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(state.server_control, c, atol=1e-5, rtol=1e-5)
  for k, control in controls.items():
    chex.assert_trees_all_close(
      jax.tree.map(lambda l: l[k], state.client_controls), control, atol=1e-5, rtol=1e-5
    )


@pytest.fixture(scope="module")
def skewed_federation(digits_dataset):
  """Heavy quantity skew (90 down to 1 example): the largest client takes 45x the steps of the
  smallest, so padded steps or a wrong sort would show."""
  sizes = [90, 2, 37, 5, 1, 60]
  order = np.random.default_rng(3).permutation(len(digits_dataset.train_y))[: sum(sizes)]
  clients = np.split(order, np.cumsum(sizes)[:-1])
  return FederatedData.from_indices(digits_dataset, clients, [c[:0] for c in clients])


@pytest.mark.parametrize(
  "strategy",  # the fast tier keeps vmap; every strategy runs skewed clients in the full suite
  ["vmap", *(pytest.param(s, marks=pytest.mark.slow) for s in ("chunked", "loop", "loop/4"))],
)
def test_fedavg_matches_reference_on_heavily_skewed_clients(skewed_federation, strategy):
  setup = _setup(skewed_federation, strategy, False)
  cohort = skewed_federation.cohort(np.arange(6))
  expected = reference.fedavg_round(
    setup.model.apply,
    setup.init_params(jax.random.key(0)),
    cohort,
    jax.random.key(100),
    **_reference_kwargs(skewed_federation),
  )
  algorithm = fedopt(setup, optax.sgd(1.0))
  state, _ = compiled_round(algorithm, setup.executor)(
    algorithm.init(jax.random.key(0)), cohort, jax.random.key(100)
  )
  chex.assert_trees_all_close(state.params, expected, atol=1e-5, rtol=1e-5)
