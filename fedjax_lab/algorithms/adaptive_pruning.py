"""Adaptive model pruning with partial personalization over a wireless uplink (Liu,
Ratnarajah, Sellathurai, Eldar, IEEE TSP 2024, arXiv 2309.01816), and its baselines as
settings of it.

The model is split at a layer-group boundary into a shared part ``u`` (the feature extractor)
and a personal part ``v_n`` per device (the head; ``personal_groups`` last groups of
``Model.layer_groups``), which stays on the device and is never uploaded. Round t:

1. Host: a channel draw for the cohort (``ops.wireless``: path loss, Rayleigh fading, FDMA) and
   each device's pruning ratio ``rho_n`` and bandwidth ``b_n`` (``pruning``: ``adaptive`` =
   the KKT allocation of ``ops.allocation`` under the latency budget ``tau``; ``fixed`` = one
   ratio; ``none`` = no pruning; both with ``bandwidth`` = ``equal`` shares or the
   ``fastest`` shares (min-max latency), which separates the allocation's gain from pruning's).
2. Device n, in one vmapped (or looped) program: mask ``m_n`` of ``u_t`` at ratio ``rho_n``
   (``ops.pruning``: magnitude or random, unstructured or by output unit), then ``update``
   ``alternating``: ``head_epochs`` epochs on ``v_n`` with ``m_n * u`` fixed, then
   ``local.epochs`` on ``u`` (masked: ``m_n * u`` in the forward pass, so pruned weights get
   zero gradients and stay zero) with ``v_n`` fixed (FedAlt / FedRep's order); or
   ``simultaneous``: ``local.epochs`` on both (FedSim / FedPer).
3. Server: ``u_{t+1}`` = the mask-aware mean, each weight averaged over the devices that kept
   it (``ops.pruning.mask_aware_mean``, computed from one pass of the setup's aggregator over
   the pairs ``(m_n * u_n, m_n)``); a weight nobody kept keeps its value.

Round latency is the slowest device's computation plus upload,
``a_n (1 - kappa rho_n) + bits_n / r_n(b_n)``; the pruned upload is a bitmap plus the kept
values (``ops.pruning.upload_bytes``). ``personal_groups=0`` with ``pruning=none`` is FedAvg
with the same latency bookkeeping. Evaluation: device n's model is its head on ``u`` pruned at
its last ratio (with ``criterion=random``, a fixed random mask at that ratio, not the one
it trained with).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  AGGREGATION_STREAM,
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
  client_weight,
  round_keys,
)
from fedjax_lab.checks import one_of, require
from fedjax_lab.engine.local import make_local_trainer
from fedjax_lab.ops import pruning, wireless
from fedjax_lab.ops.aggregate import tree_broadcast, tree_gather, tree_scatter, weighted_mean
from fedjax_lab.ops.allocation import RoundProblem, allocate, fastest_bandwidth
from fedjax_lab.ops.losses import masked_mean, per_example_cross_entropy

PRUNING_MODES = ("adaptive", "fixed", "none")
UPDATES = ("alternating", "simultaneous")
CRITERIA = ("magnitude", "random")
BANDWIDTH_SHARES = ("equal", "fastest")


@dataclasses.dataclass(frozen=True)
class AdaptivePruningConfig:
  """``algorithm.adaptive_pruning``; the wireless defaults are documented in ops/wireless.py."""

  personal_groups: int = 1  # last layer groups kept per device (0: everything shared)
  update: str = "alternating"  # alternating (v, then u) | simultaneous
  head_epochs: int = 1  # alternating: epochs on v before local.epochs on u
  pruning: str = "adaptive"  # adaptive (KKT) | fixed (one ratio) | none
  ratio: float = 0.5  # fixed: the ratio; adaptive: the largest ratio allowed (rho_max)
  bandwidth: str = "equal"  # fixed / none: equal | fastest (min-max latency); adaptive: KKT
  criterion: str = "magnitude"  # magnitude | random
  structured: bool = False  # prune whole output units instead of single weights
  latency_budget_s: float = 1.0  # tau, adaptive only
  bandwidth_mhz: float = 20.0
  noise_dbm_per_hz: float = -174.0
  power_w: float = 0.1
  cell_radius_m: float = 500.0
  cpu_ghz_low: float = 1.0
  cpu_ghz_high: float = 2.0
  cycles_per_sample: float = 1e6
  shared_compute_fraction: float = 0.95  # kappa: the shared part's share of the computation
  placement_seed: int = 0  # device positions and CPU speeds

  def __post_init__(self):
    prefix = "algorithm.adaptive_pruning."
    require(self.personal_groups >= 0, prefix + "personal_groups", ">= 0", self.personal_groups)
    one_of(prefix + "update", self.update, UPDATES)
    require(self.head_epochs >= 1, prefix + "head_epochs", ">= 1", self.head_epochs)
    one_of(prefix + "pruning", self.pruning, PRUNING_MODES)
    require(0 <= self.ratio < 1, prefix + "ratio", "in [0, 1)", self.ratio)
    one_of(prefix + "bandwidth", self.bandwidth, BANDWIDTH_SHARES)
    one_of(prefix + "criterion", self.criterion, CRITERIA)
    for name in ("latency_budget_s", "bandwidth_mhz", "power_w", "cell_radius_m"):
      require(getattr(self, name) > 0, prefix + name, "> 0", getattr(self, name))
    require(
      0 < self.cpu_ghz_low <= self.cpu_ghz_high,
      prefix + "cpu_ghz_low",
      f"in (0, cpu_ghz_high={self.cpu_ghz_high}]",
      self.cpu_ghz_low,
    )
    require(self.cycles_per_sample > 0, prefix + "cycles_per_sample", "> 0", self.cycles_per_sample)
    require(
      0 <= self.shared_compute_fraction <= 1,
      prefix + "shared_compute_fraction",
      "in [0, 1]",
      self.shared_compute_fraction,
    )
    require(self.placement_seed >= 0, prefix + "placement_seed", ">= 0", self.placement_seed)


@struct.dataclass
class PruningState:
  shared: dict  # u
  heads: dict  # v, [num_clients, ...]
  last_ratio: jax.Array  # [num_clients], the ratio each device last trained at
  aggregator_state: Any = ()


def split_groups(params: dict, groups: tuple[str, ...], personal_groups: int):
  """``(shared, personal)``: the first ``len(groups) - personal_groups`` groups, the rest."""
  require(
    personal_groups < len(groups),
    "algorithm.adaptive_pruning.personal_groups",
    f"< the model's {len(groups)} layer groups ({', '.join(groups)})",
    personal_groups,
  )
  cut = len(groups) - personal_groups
  return {g: params[g] for g in groups[:cut]}, {g: params[g] for g in groups[cut:]}


def upload_bits(shared_shape, options: AdaptivePruningConfig) -> tuple[float, float]:
  """``(S, F)``: bits of the prunable weights (float32), and the bits sent whatever the
  ratio: the other leaves, plus a bitmap of one bit per prunable weight when pruning."""
  leaves = jax.tree.leaves(shared_shape)
  prunable = sum(int(np.prod(leaf.shape)) for leaf in leaves if len(leaf.shape) >= 2)
  other = sum(int(np.prod(leaf.shape)) for leaf in leaves if len(leaf.shape) < 2)
  bitmap = prunable if options.pruning != "none" else 0
  return 32.0 * prunable, 32.0 * other + bitmap


def system_devices(num_devices: int, options: AdaptivePruningConfig) -> wireless.Devices:
  """The run's devices, placed by ``options.placement_seed``."""
  return wireless.place_devices(
    num_devices,
    options.placement_seed,
    cell_radius_m=options.cell_radius_m,
    bandwidth_mhz=options.bandwidth_mhz,
    noise_dbm_per_hz=options.noise_dbm_per_hz,
    power_w=options.power_w,
    cpu_ghz=(options.cpu_ghz_low, options.cpu_ghz_high),
    cycles_per_sample=options.cycles_per_sample,
  )


def samples_processed(schedule, head_schedule, num_examples: np.ndarray) -> np.ndarray:
  """Training samples a device processes in a round (steps x batch, both phases)."""
  steps = np.asarray(schedule.client_steps(num_examples))
  if head_schedule is not None:
    steps = steps + np.asarray(head_schedule.client_steps(num_examples))
  return steps * np.minimum(schedule.batch_size, num_examples)


@dataclasses.dataclass(frozen=True)
class RoundPlan:
  """One round on the air, per cohort device (arrays ``[cohort]``)."""

  rho: np.ndarray
  bandwidth_hz: np.ndarray
  snr_bandwidth: np.ndarray  # g_n = p_n h_n / N0
  compute_s: np.ndarray
  upload_s: np.ndarray
  energy_j: np.ndarray
  feasible: bool

  def metrics(self) -> dict:
    """The slowest device's latency and its two parts, the cohort's energy."""
    slowest = int(np.argmax(self.compute_s + self.upload_s))
    return {
      "latency_s": float(self.compute_s[slowest] + self.upload_s[slowest]),
      "latency_compute_s": float(self.compute_s[slowest]),
      "latency_upload_s": float(self.upload_s[slowest]),
      "energy_j": float(np.sum(self.energy_j)),
      "allocation_feasible": float(self.feasible),
    }


def plan_round(
  devices: wireless.Devices,
  options: AdaptivePruningConfig,
  num_examples: np.ndarray,
  samples: np.ndarray,
  key: jax.Array,
  bits: tuple[float, float],
) -> RoundPlan:
  """The channel draw of round ``key`` for the cohort's ``devices`` and each one's ratio and
  bandwidth, by ``options.pruning`` and ``options.bandwidth`` (module docstring)."""
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  snr = devices.snr_bandwidth(devices.channel_gains(rng))
  kappa = options.shared_compute_fraction
  compute = wireless.computation_seconds(devices, samples, 0.0, kappa)
  problem = RoundProblem(
    compute_s=compute,
    snr_bandwidth=snr,
    weights=num_examples / max(num_examples.sum(), 1),
    prunable_bits=bits[0],
    fixed_bits=bits[1],
    shared_fraction=kappa,
    latency_s=options.latency_budget_s,
    bandwidth_hz=devices.bandwidth_hz,
    rho_max=options.ratio,
  )
  feasible = True
  if options.pruning == "adaptive":
    allocation = allocate(problem)
    rho, bandwidth, feasible = allocation.rho, allocation.bandwidth_hz, allocation.feasible
  else:
    rho = np.full(len(samples), options.ratio if options.pruning == "fixed" else 0.0)
    if options.bandwidth == "fastest":
      bandwidth = fastest_bandwidth(problem, rho)
    else:
      bandwidth = np.full(len(samples), devices.bandwidth_hz / len(samples))
  upload = (bits[1] + (1 - rho) * bits[0]) / wireless.shannon_rate(bandwidth, snr)
  energy = wireless.computation_joules(devices, samples, rho, kappa) + devices.power_w * upload
  return RoundPlan(rho, bandwidth, snr, compute * (1 - kappa * rho), upload, energy, feasible)


def merge_groups(shared: dict, head: dict) -> dict:
  """The whole model from its shared and personal layer groups."""
  return {**shared, **head}


def pruning_mask(options: AdaptivePruningConfig, shared, rho, key):
  """The mask that prunes a fraction ``rho`` of ``shared``: at random (``criterion=random``)
  or the smallest magnitudes (per weight, or per unit when ``structured``)."""
  if options.criterion == "random":
    return pruning.random_mask(key, shared, rho)
  return pruning.magnitude_mask(shared, rho, options.structured)


def local_update(setup: ClientSetup, options: AdaptivePruningConfig):
  """One device's round, and the head's schedule (None unless ``update=alternating``).

  Returns:
    ``(client, head_schedule)``: ``client(shared, head, rho, x, y, num_examples, key) ->
    (upload, head, mean_loss, upload_bytes)``: the device prunes ``rho`` of the shared part
    (``pruning_mask``), trains the head then the masked shared part (``alternating``) or both
    at once (``joint``), and uploads ``{"kept": masked shared part, "mask": mask}``.
  """

  def loss_of(params, x, y, batch_mask):
    logits = setup.train_apply(params, x)
    return masked_mean(per_example_cross_entropy(logits, y), batch_mask)

  def head_objective(head, x, y, batch_mask, shared):
    return loss_of(merge_groups(shared, head), x, y, batch_mask)  # shared: context, not trained

  def shared_objective(shared, x, y, batch_mask, context):
    head, mask = context
    return loss_of(merge_groups(pruning.apply_mask(shared, mask), head), x, y, batch_mask)

  def joint_objective(both, x, y, batch_mask, mask):
    shared, head = both
    return loss_of(merge_groups(pruning.apply_mask(shared, mask), head), x, y, batch_mask)

  head_schedule, train_head = None, None
  if options.update == "alternating":
    head_schedule = dataclasses.replace(setup.schedule, epochs=options.head_epochs)
    train_head = make_local_trainer(head_objective, setup.optimizer, head_schedule, setup.unroll)
  train_shared = make_local_trainer(shared_objective, setup.optimizer, setup.schedule, setup.unroll)
  train_joint = make_local_trainer(joint_objective, setup.optimizer, setup.schedule, setup.unroll)

  def client(shared, head, rho, x, y, num_examples, key):
    mask = pruning_mask(options, shared, rho, key)
    shared = pruning.apply_mask(shared, mask)
    head_key, shared_key = jax.random.split(key)
    if head_schedule is not None:
      head, _ = train_head(head, x, y, num_examples, head_key, shared)
      shared, result = train_shared(shared, x, y, num_examples, shared_key, (head, mask))
    else:
      (shared, head), result = train_joint((shared, head), x, y, num_examples, shared_key, mask)
    shared = pruning.apply_mask(shared, mask)
    kept = {"kept": shared, "mask": mask}
    return kept, head, result.mean_loss, pruning.upload_bytes(mask)

  return client, head_schedule


def initial_state(setup: ClientSetup, options: AdaptivePruningConfig, key) -> PruningState:
  """The shared part, every device's copy of the personal head, ratios 0, and the state of
  an aggregator over (kept weights, masks) pairs."""
  groups, personal = setup.layer_groups, options.personal_groups
  shared, head = split_groups(setup.init_params(key), groups, personal)
  shared_shape, _ = split_groups(setup.params_shape, groups, personal)
  return PruningState(
    shared,
    tree_broadcast(head, setup.num_clients),
    jnp.zeros(setup.num_clients, jnp.float32),
    setup.aggregator.init({"kept": shared_shape, "mask": shared_shape}),
  )


def aggregate_kept(setup: ClientSetup, carry) -> dict:
  """The mask-aware mean of the kept weights; each head written back."""
  state, cohort, key, rho = carry["state"], carry["cohort"], carry["key"], carry["rho"]
  kept, heads, losses, upload = carry["trained"]
  weights = client_weight(cohort.num_examples, setup.weighting)
  reference = {"kept": state.shared, "mask": jax.tree.map(jnp.ones_like, state.shared)}
  means, aggregator_state = setup.aggregator.aggregate(
    kept, weights, reference, state.aggregator_state, jax.random.fold_in(key, AGGREGATION_STREAM)
  )
  shared = pruning.mask_aware_mean(means["kept"], means["mask"], state.shared)
  new_state = PruningState(
    shared,
    tree_scatter(state.heads, cohort.client_ids, heads),
    state.last_ratio.at[cohort.client_ids].set(rho),
    aggregator_state,
  )
  metrics = {
    "train_loss": weighted_mean(losses, weights),
    "prune_ratio_mean": jnp.mean(rho),
    "upload_bytes_mean": jnp.mean(upload),
  }
  return {"state": new_state, "metrics": metrics}


def adaptive_pruning(setup: ClientSetup, options: AdaptivePruningConfig) -> Algorithm:
  """Adaptive pruning with partial personalization (module docstring).

  Args:
    setup: client training (``setup.optimizer``, ``setup.schedule`` for the shared part),
      executor and aggregator (the mean gives the mask-aware mean).
    options: split, update order, pruning mode and the wireless system.

  Returns:
    An ``Algorithm`` with host phases (the allocation runs in NumPy between rounds); metrics
    ``train_loss``, ``prune_ratio_mean``, ``upload_bytes_mean`` and the simulated
    ``latency_s`` (slowest device), ``latency_compute_s``, ``latency_upload_s`` (its two
    parts), ``energy_j`` (cohort total), ``allocation_feasible``.
  """
  groups = setup.layer_groups
  shared_shape, _ = split_groups(setup.params_shape, groups, options.personal_groups)
  devices = system_devices(setup.num_clients, options)
  prunable_bits, fixed_bits = upload_bits(shared_shape, options)

  client, head_schedule = local_update(setup, options)
  train_cohort = setup.executor.map(client, (None, 0, 0, 0, 0, 0, 0), sort_by=5)

  def train(carry):
    """Each device trains its pruned shared part (ratio ``rho``) and its head."""
    state, cohort = carry["state"], carry["cohort"]
    trained = train_cohort(
      state.shared,
      tree_gather(state.heads, cohort.client_ids),
      carry["rho"],
      cohort.x,
      cohort.y,
      cohort.num_examples,
      round_keys(carry["key"], cohort),
    )
    return {**carry, "trained": trained}

  training = phases.for_executor(
    phases.Phases(phases.clients(train), phases.server(functools.partial(aggregate_kept, setup))),
    setup.executor.jit_round,
  )

  def round_fn(state, cohort, key):
    ids, num_examples = np.asarray(cohort.client_ids), np.asarray(cohort.num_examples)
    plan = plan_round(
      devices.take(ids),
      options,
      num_examples,
      samples_processed(setup.schedule, head_schedule, num_examples),
      key,
      (prunable_bits, fixed_bits),
    )
    state, metrics = training(state, cohort, key, rho=jnp.asarray(plan.rho, jnp.float32))
    return state, {**metrics, **plan.metrics()}

  def personal_params(state):
    def device_model(head, rho, key):
      shared = pruning.apply_mask(state.shared, pruning_mask(options, state.shared, rho, key))
      return merge_groups(shared, head)

    keys = jax.random.split(jax.random.key(0), setup.num_clients)
    return jax.vmap(device_model)(state.heads, state.last_ratio, keys)

  return Algorithm(
    functools.partial(initial_state, setup, options),
    round_fn,
    global_params=(lambda state: state.shared) if options.personal_groups == 0 else None,
    personal_params=personal_params,
    download=shared_shape,
    upload=shared_shape,
    host_phases=True,
  )


ENTRY = AlgorithmEntry(
  lambda setup, options, config: adaptive_pruning(setup, options),
  options=AdaptivePruningConfig,
  aggregated_uploads=True,
)
