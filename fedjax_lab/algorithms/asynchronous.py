"""Asynchronous aggregation on a simulated clock: FedBuff (Nguyen et al. 2022, "Federated
Learning with Buffered Asynchronous Aggregation") and FedAsync (Xie et al. 2019,
"Asynchronous Federated Optimization").

The server keeps ``C`` clients in flight (``concurrency``), each in a slot of the state with
its result, its aggregation weight, the server version it started from and the simulated
time its result arrives (``ops/asynchronous.py``). One compiled step (one runner round):

1. The ``K`` earliest results arrive (``K`` = ``cohort_size``); the clock moves to the last
   of them; each has staleness ``tau_i`` (server versions since it started).
2. The server steps (version ``v + 1``) if any arrival brought a result:

   - FedBuff: ``x <- x - server_opt(x - x')``, ``x' = x + (sum_i w_i s_i / sum_i w_i)
     (A(x + d_i; w_i s_i) - x)``, ``d_i = y_i - x_{tau_i}`` the client's update,
     ``s_i = (1 + tau_i) ** -a`` (the paper's ``a = 0.5``), ``w_i`` the setup's weighting;
     with the mean, ``x' = x + sum_i w_i s_i d_i / sum_i w_i`` (the paper's
     ``(1/K) sum_i s(tau_i) d_i`` for uniform weights).
   - FedAsync: each arrival in order mixes its model in, ``x <- (1 - b_i) x + b_i y_i`` with
     ``b_i = alpha s_i``; the ``K`` mixes are one ``x' = x + c (A(y_i; g_i) - x)``
     (``ops.asynchronous.sequential_mixing``). ``K = 1`` is the paper's algorithm; with
     ``K > 1`` the replacements of all but the last arrival start from the model before
     the step's mixes.

3. The ``K`` clients of the round's cohort are dispatched into the freed slots, one per
   arrival: each starts when that result arrived, from the model the server then holds (``x``
   for the first ``K - 1``, the stepped model for the last, as an event-driven server
   would), and its result will arrive ``cohort.seconds`` later (its download, compute and
   upload on its device, ``ops/systems.py``). They train now, vmapped, and their results wait
   in the slots.

``A`` is the setup's aggregator (the weighted mean by default): every result reaches the server
through it. The first ``C / K`` steps only fill the slots (no result has arrived yet; metric
``server_steps`` counts the real steps). A client lost to the system (unavailable, dropped,
past ``systems.deadline_s``, which here is a per-client timeout) brings weight 0 and frees
its slot at the time the runner gives it. A result that would arrive before the step that
dispatched it ends is counted in the next step. Metrics: ``simulated_seconds`` (the clock),
``server_steps``, ``staleness_mean`` / ``staleness_max`` over the step's results,
``arrivals`` (results that brought something) and ``train_loss`` (of the dispatched clients).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  aggregate_models,
  client_weights,
)
from fedjax_lab.algorithms.fedopt import server_optimizer
from fedjax_lab.checks import require
from fedjax_lab.ops.aggregate import tree_gather, tree_scatter, weighted_mean
from fedjax_lab.ops.asynchronous import earliest_slots, polynomial_staleness, sequential_mixing

EMPTY_SLOT = -1.0  # an unfilled slot's arrival time: before any real result


@struct.dataclass
class AsyncState:
  params: dict
  server_opt_state: optax.OptState
  results: dict  # [C, ...]: FedBuff the updates y - x_tau, FedAsync the models y
  weight: jax.Array  # [C] each result's aggregation weight (0: brings nothing)
  finish: jax.Array  # [C] simulated seconds at which each result arrives
  version: jax.Array  # [C] int32, the server version each client started from
  server_version: jax.Array  # int32
  clock: jax.Array  # simulated seconds of the last arrival
  aggregator_state: Any = ()


def initial_state(setup, server_opt, concurrency: int, key) -> AsyncState:
  """The model from ``key``, ``concurrency`` empty slots, version 0, the clock at 0."""
  params = setup.init_params(key)
  results = jax.tree.map(lambda p: jnp.zeros((concurrency,) + p.shape, p.dtype), params)
  return AsyncState(
    params=params,
    server_opt_state=server_opt.init(params),
    results=results,
    weight=jnp.zeros(concurrency, jnp.float32),
    finish=jnp.full(concurrency, EMPTY_SLOT, jnp.float32),
    version=jnp.zeros(concurrency, jnp.int32),
    server_version=jnp.zeros((), jnp.int32),
    clock=jnp.zeros((), jnp.float32),
    aggregator_state=setup.aggregator.init(setup.params_shape),
  )


def server_target(setup, staleness_exponent: float, mixing, state, slots, key):
  """``(x', aggregator_state, stepped)``: where the arrivals in ``slots`` move ``x`` (FedBuff's
  discounted mean of updates with ``mixing=None``, else FedAsync's sequential mixing)."""
  x = state.params
  weight = state.weight[slots]
  staleness = state.server_version - state.version[slots]
  discount = polynomial_staleness(staleness, staleness_exponent)
  stored = tree_gather(state.results, slots)
  if mixing is None:
    models = jax.tree.map(lambda p, d: p[None] + d, x, stored)
    weights = weight * discount
    scale = weights.sum() / jnp.maximum(weight.sum(), jnp.finfo(jnp.float32).tiny)
  else:
    models = stored
    weights, scale = sequential_mixing(jnp.where(weight > 0, mixing * discount, 0.0))
  aggregate, aggregator_state = aggregate_models(
    setup, models, weights, x, state.aggregator_state, key
  )
  target = jax.tree.map(lambda p, a: p + scale * (a - p), x, aggregate)
  return target, aggregator_state, weight.sum() > 0


def store(setup, arrivals: int, sends_update: bool, carry):
  """The new results wait in the freed slots until their simulated finish (as updates when
  ``sends_update``, FedBuff's; as models for FedAsync); the round's metrics."""
  state, cohort, slots = carry["state"], carry["cohort"], carry["slots"]
  trained, server_version = carry["trained"], carry["server_version"]
  arrived = state.finish[slots]
  counted = state.weight[slots] > 0
  staleness = (state.server_version - state.version[slots]).astype(jnp.float32)
  results = jax.tree.map(jnp.subtract, trained, carry["starts"]) if sends_update else trained
  weights = client_weights(cohort, setup.weighting)
  seconds = jnp.zeros(arrivals) if cohort.seconds is None else cohort.seconds
  last = carry["last"]
  new_state = AsyncState(
    params=carry["stepped_params"],
    server_opt_state=carry["opt_state"],
    results=tree_scatter(state.results, slots, results),
    weight=state.weight.at[slots].set(weights),
    finish=state.finish.at[slots].set(jnp.maximum(arrived, 0.0) + seconds.astype(jnp.float32)),
    version=state.version.at[slots].set(jnp.where(last, server_version, state.server_version)),
    server_version=server_version,
    clock=jnp.maximum(state.clock, arrived.max()),
    aggregator_state=carry["aggregator_state"],
  )
  count = jnp.maximum(counted.sum(), 1)
  metrics = {
    "train_loss": weighted_mean(carry["result"].mean_loss, weights),
    "simulated_seconds": new_state.clock,
    "server_steps": server_version,
    "arrivals": counted.sum(),
    "staleness_mean": jnp.where(counted, staleness, 0.0).sum() / count,
    "staleness_max": jnp.where(counted, staleness, 0.0).max(),
  }
  return {"state": new_state, "metrics": metrics}


def asynchronous(
  setup: ClientSetup,
  server_opt: optax.GradientTransformation,
  *,
  concurrency: int,
  arrivals: int,
  staleness_exponent: float,
  mixing: float | None = None,
) -> Algorithm:
  """FedBuff (``mixing=None``) or FedAsync (``mixing = alpha``) (module docstring).

  Args:
    setup: client training, executor and aggregator.
    server_opt: applied to the pseudo-gradient ``x - x'`` (``optax.sgd(1.0)``: the papers').
    concurrency: ``C``, clients in flight; a multiple of ``arrivals``.
    arrivals: ``K``, results per server step (the runner's cohort size).
    staleness_exponent: ``a`` in ``s(tau) = (1 + tau) ** -a``.
    mixing: FedAsync's ``alpha`` in (0, 1]; None for FedBuff.

  Returns:
    An ``Algorithm`` whose round needs ``cohort.seconds``; metrics as the module docstring.
  """
  train = setup.cohort_trainer(None, params_axis=0, context_axis=None)
  sends_update = mixing is None

  def step_on_arrivals(carry):
    """The server step on the ``arrivals`` earliest results (when the last of them arrives),
    and the models the replacements start from: arrival i's replacement starts from the model
    the server holds right after it (the stepped one for the last)."""
    state, key = carry["state"], carry["key"]
    slots = earliest_slots(state.finish, arrivals)
    x = state.params
    target, aggregator_state, stepped = server_target(
      setup, staleness_exponent, mixing, state, slots, key
    )
    pseudo_gradient = jax.tree.map(jnp.subtract, x, target)
    updates, opt_state = server_opt.update(pseudo_gradient, state.server_opt_state, x)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(stepped, n, o), new, old)
    stepped_params = keep(optax.apply_updates(x, updates), x)
    last = jnp.arange(arrivals) == arrivals - 1
    starts = jax.tree.map(
      lambda new, old: jnp.where(last.reshape((-1,) + (1,) * new.ndim), new[None], old[None]),
      stepped_params,
      x,
    )
    return {
      **carry,
      "slots": slots,
      "stepped_params": stepped_params,
      "opt_state": keep(opt_state, state.server_opt_state),
      "aggregator_state": keep(aggregator_state, state.aggregator_state),
      "server_version": state.server_version + stepped.astype(jnp.int32),
      "starts": starts,
      "last": last,
    }

  def dispatch(carry):
    """The replacements train from their starts."""
    trained, result = train(carry["starts"], carry["cohort"], carry["key"])
    return {**carry, "trained": trained, "result": result}

  init = functools.partial(initial_state, setup, server_opt, concurrency)
  round_fn = phases.Phases(
    phases.server(step_on_arrivals),
    phases.clients(dispatch),
    phases.server(functools.partial(store, setup, arrivals, sends_update)),
  )

  return Algorithm(init, round_fn, global_params=lambda state: state.params)


@dataclasses.dataclass(frozen=True)
class FedBuffOptions:
  """FedBuff (``algorithm.fedbuff``): ``concurrency`` clients in flight (a multiple of
  ``cohort_size``, the results per step ``K``), staleness discount ``(1 + tau) **
  -staleness_exponent``. The server optimizer is ``server`` (sgd 1.0 by default)."""

  concurrency: int = 100
  staleness_exponent: float = 0.5

  _table = "algorithm.fedbuff"

  def __post_init__(self):
    require(self.concurrency >= 1, f"{self._table}.concurrency", ">= 1", self.concurrency)
    require(
      self.staleness_exponent >= 0,
      f"{self._table}.staleness_exponent",
      ">= 0",
      self.staleness_exponent,
    )

  def check_population(self, num_clients: int) -> None:
    """Refuses more clients in flight than the federation has: a client trains one model at a
    time, so a slot beyond ``num_clients`` would put a client in flight twice at once."""
    require(
      self.concurrency <= num_clients,
      f"{self._table}.concurrency",
      f"<= data.num_clients={num_clients} (a client is in flight at most once at a time)",
      self.concurrency,
    )

  def check_cohort(self, cohort: int) -> None:
    """Refuses a ``concurrency`` that is not a multiple of the results per step."""
    require(
      self.concurrency % cohort == 0,
      f"{self._table}.concurrency",
      f"a multiple of cohort_size={cohort} (the results per server step)",
      self.concurrency,
    )


@dataclasses.dataclass(frozen=True)
class FedAsyncOptions(FedBuffOptions):
  """FedAsync (``algorithm.fedasync``): as FedBuff's, and the mixing rate ``alpha``,
  discounted by ``(1 + tau) ** -staleness_exponent`` (the paper's polynomial staleness)."""

  alpha: float = 0.6

  _table = "algorithm.fedasync"

  def __post_init__(self):
    super().__post_init__()
    require(0 < self.alpha <= 1, f"{self._table}.alpha", "in (0, 1]", self.alpha)


def _build(setup: ClientSetup, options, config, mixing=None) -> Algorithm:
  return asynchronous(
    setup,
    server_optimizer(config.server),
    concurrency=options.concurrency,
    arrivals=config.cohort_size,
    staleness_exponent=options.staleness_exponent,
    mixing=mixing,
  )


FEDBUFF = AlgorithmEntry(
  lambda setup, options, config: _build(setup, options, config),
  FedBuffOptions,
  keeps_lost_clients=True,
  aggregated_uploads=True,
  asynchronous=True,
)
FEDASYNC = AlgorithmEntry(
  lambda setup, options, config: _build(setup, options, config, options.alpha),
  FedAsyncOptions,
  keeps_lost_clients=True,
  aggregated_uploads=True,
  asynchronous=True,
)
