"""From a config to the objects a run needs: the federation, the model, the client setup
(optimizer, schedule, executor, aggregator) and the algorithm. ``runner.py`` keeps the loop."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import optax

from fedjax_lab.algorithms import ALGORITHMS, Algorithm, AlgorithmEntry, ClientSetup
from fedjax_lab.config import DataConfig, ExperimentConfig
from fedjax_lab.data import FederatedData, groups, partition, poisoning
from fedjax_lab.data.catalog import FEDERATIONS, PARTITIONERS, SOURCE_CHOICES
from fedjax_lab.data.ragged import ClientArrays, FirstExamples
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import MODELS, Model, build_model
from fedjax_lab.ops.aggregators import (
  AGGREGATORS,
  COMPRESSORS,
  Aggregator,
  adaptive_clip_mean,
  chain,
  clip_layer_norms,
  clip_update_norm,
  error_feedback,
  fixed_denominator_mean,
  gaussian_noise,
  local_gaussian_noise,
  under_attack,
)
from fedjax_lab.ops.attacks import ATTACKS
from fedjax_lab.ops.communication import tree_bytes
from fedjax_lab.tables import dotted_fields

# A run's state (global and per-client models, control variates, the aggregator's state) may
# take at most this share of the memory it lives in; the round's training, a donated copy and
# evaluation need the rest.
STATE_MEMORY_SHARE = 0.5
# Above this many clients made on demand, every client's own test split is not evaluated at
# each evaluation (it would make every client): eval_clients must name a sample.
ON_DEMAND_FULL_EVALUATION = 10_000

# On CPU, `auto` runs models without convolutions from MIN_LOOP_COHORT clients a round as `loop`
# calls of CPU_CLIENTS_PER_CALL vmapped clients, two calls at once (MLP, 100 clients: 0.18-0.27 s
# a round against 0.35-0.48 s `chunked`); smaller cohorts stay one `vmap` program, as fast at 10
# clients and without a per-call dispatch (docs/performance.md). Sequence models too: on
# skewed federations one vmap program pads every client to the cohort's largest (StackOverflow
# layout, Zipf sizes, word_lstm, 50 clients: 15.4 s a round as loop calls against 100.7 s, and
# 1.5 against 3.9 GiB; Shakespeare, 30 clients: char_lstm 4.7-5.3 s against 8.2-8.7 s,
# transformer_lm 1.08 s against 1.52-1.60 s). WorldLM's tree of 27 byte_lm clients is the one
# measured case where vmap wins (0.56 s a round against 0.65 s): experiments/worldlm sets it.
CPU_CLIENTS_PER_CALL = 4
MIN_LOOP_COHORT = 16


def build_federation(data: DataConfig) -> FederatedData:
  """The federation the config describes: a given one (``FEDERATIONS``: its clients come with
  the source), or source, partition and per-client train/test split; then the latent group
  shift (``data.latent_groups``). A natural partition names its clients by their groups
  (``client_paths``; Shakespeare's genres become known client groups)."""
  federation = given_federation(data) if data.source in FEDERATIONS else partitioned(data)
  if data.latent_groups == 0:
    return federation
  return groups.shift_by_group(
    federation,
    groups.contiguous_groups(data.num_clients, data.latent_groups),
    data.group_shift,
    data.seed + 2,
  )


def given_federation(data: DataConfig) -> FederatedData:
  """``FEDERATIONS``' federation for ``data.source``, which must hold ``data.num_clients``."""
  federation = FEDERATIONS.get(data.source).build(data, data.source_options)
  if federation.num_clients != data.num_clients:
    raise ValueError(
      f"data.num_clients must be the {federation.num_clients} clients of data.source="
      f"{data.source}, got {data.num_clients}"
    )
  if data.max_client_examples > 0:  # the training split's first examples of each client
    if not isinstance(federation.train, ClientArrays):
      raise ValueError(
        f"data.max_client_examples must be 0 for data.source={data.source} (its clients are "
        f"made on demand), got {data.max_client_examples}"
      )
    capped = FirstExamples(federation.train, data.max_client_examples)
    return dataclasses.replace(federation, train=capped)
  return federation


def partitioned(data: DataConfig) -> FederatedData:
  """A pooled source split into clients by ``data.partition``."""
  dataset = SOURCE_CHOICES.get(data.source).build(data, data.source_options)
  clients = PARTITIONERS.get(data.partition).build(dataset, data, data.partition_options)
  if data.max_client_examples > 0:
    clients = [indices[: data.max_client_examples] for indices in clients]
  train, test = partition.train_test_split(clients, data.test_fraction, data.seed + 1)
  federation = FederatedData.from_indices(dataset, train, test)
  if data.partition != "natural" or data.latent_groups > 0:
    return federation
  names = tuple(dataset.group_names[dataset.train_groups[indices[0]]] for indices in clients)
  federation = dataclasses.replace(federation, client_paths=names)
  if data.source == "shakespeare":
    return dataclasses.replace(federation, client_groups=groups.shakespeare_genres(names))
  return federation


@dataclasses.dataclass(frozen=True)
class ResolvedExecution:
  """What ``auto`` settings became: ``strategy``, ``unroll`` (a static unrolled step loop
  instead of the rolled one), ``conv`` (how convolutions are computed), ``threads`` (calls the
  ``loop`` strategy runs at once) and ``clients_per_call`` (clients in one ``loop`` call)."""

  strategy: str
  unroll: bool
  conv: str
  threads: int
  clients_per_call: int


def resolve_execution(config: ExperimentConfig) -> ResolvedExecution:
  """The ``auto`` rules (docs/performance.md has the measurements behind them).

  Step loops are rolled (each client runs its own step count; compile time does not grow with
  the step count). On CPU the ``loop`` strategy runs a call per core at once: convolutional
  models one client a call with im2col convolutions (XLA:CPU runs ``lax.conv``'s gradients
  inside loops, and vmapped per-client ``lax.conv``, many times slower), other models blocks of
  ``CPU_CLIENTS_PER_CALL`` vmapped clients from ``MIN_LOOP_COHORT`` clients a round (``vmap``
  below). Elsewhere: ``vmap`` and XLA's convolutions.
  """
  entry = MODELS.get(config.model.name)
  has_conv = entry.has_conv
  on_cpu = jax.default_backend() == "cpu"
  strategy, conv = config.execution.strategy, config.model.conv
  if strategy == "auto":
    blocks = has_conv or config.cohort_size >= MIN_LOOP_COHORT
    strategy = "loop" if on_cpu and blocks else "vmap"
  if conv == "auto":
    conv = "im2col" if on_cpu and has_conv else "xla"
  threads = config.execution.threads
  if threads == 0:
    threads = min(2, os.cpu_count() or 1) if on_cpu and strategy == "loop" else 1
  clients_per_call = config.execution.clients_per_call
  if clients_per_call == 0:
    clients_per_call = 1 if has_conv else CPU_CLIENTS_PER_CALL
  return ResolvedExecution(
    strategy, config.execution.unroll == "unroll", conv, threads, clients_per_call
  )


def client_optimizer(name: str, learning_rate: float, momentum: float, weight_decay: float = 0.0):
  """``local.optimizer``: SGD (with momentum if > 0), Adam, or AdamW (decoupled
  ``weight_decay``)."""
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=momentum or None)
  if name == "adamw":
    return optax.adamw(learning_rate, weight_decay=weight_decay)
  return optax.adam(learning_rate)


def build_aggregator(config: ExperimentConfig) -> Aggregator:
  """The ``aggregation.rule`` (with Poisson cohorts: the mean over the expected cohort size,
  ``fixed_denominator_mean``), after per-client update clipping if ``clip_norm > 0`` (per
  layer with ``clip_per_layer``), local noise if ``privacy.local_noise_multiplier > 0`` and
  the update compression ``compression.name`` (what the client sends; with
  ``compression.error_feedback``, ahead of everything: ``ops.aggregators.error_feedback``),
  then central Gaussian
  noise if ``privacy.noise_multiplier > 0`` (std ``z C / K``, ``K`` the
  contributions aggregated: ``config.contributions``, 1 for a pooled method);
  or, with ``clip_quantile > 0``, the adaptively clipped (noisy) mean; fed a poisoned cohort
  when ``attack`` is a model-poisoning attack."""
  aggregation, privacy = config.aggregation, config.privacy
  if aggregation.clip_quantile > 0:
    return _attacked(
      config,
      adaptive_clip_mean(
        aggregation.clip_norm,
        aggregation.clip_quantile,
        aggregation.clip_learning_rate,
        privacy.noise_multiplier,
        aggregation.clip_count_stddev or config.contributions / 20,
      ),
    )
  if config.cohort_sampling == "poisson":  # the rule is the mean (config validation)
    reducer = fixed_denominator_mean(config.cohort_size)
  else:
    reducer = AGGREGATORS.get(aggregation.rule).build(aggregation.options)
  clip, parts = aggregation.clip_norm, [reducer]
  compressor = COMPRESSORS.get(config.compression.name).build(config.compression.options)
  feedback = config.compression.error_feedback
  if compressor is not None and not feedback:  # what the client sends, after clipping and noise
    parts.insert(0, compressor)
  if privacy.local_noise_multiplier > 0:
    parts.insert(0, local_gaussian_noise(privacy.local_noise_multiplier * clip))
  if clip > 0:
    parts.insert(0, (clip_layer_norms if aggregation.clip_per_layer else clip_update_norm)(clip))
  if privacy.noise_multiplier > 0:
    stddev = privacy.noise_multiplier * aggregation.clip_norm / config.contributions
    parts.append(gaussian_noise(stddev))
  aggregator = _attacked(config, parts[0] if len(parts) == 1 else chain(*parts))
  if feedback:  # each client compresses its contribution plus its residual, before the rest
    return error_feedback(aggregator, compressor, config.data.num_clients)
  return aggregator


def _attacked(config: ExperimentConfig, aggregator: Aggregator) -> Aggregator:
  """``aggregator`` fed a poisoned cohort when ``attack`` is a model-poisoning attack (the
  attacker acts before any clipping)."""
  attack = config.attack
  if attack.kind in ATTACKS and attack.fraction > 0:
    return under_attack(aggregator, attack.kind, attack.fraction, attack.strength)
  return aggregator


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything built from a config: ``train_data`` is what clients train on (the pooled
  federation for a ``pooled`` method), ``data`` what is evaluated."""

  config: ExperimentConfig
  data: FederatedData
  train_data: FederatedData
  model: Model
  setup: ClientSetup
  entry: AlgorithmEntry
  algorithm: Algorithm

  @property
  def cohort_size(self) -> int:
    return 1 if self.entry.pooled else self.config.cohort_size


def check_single_labels(config: ExperimentConfig, entry: AlgorithmEntry, data) -> None:
  """One line, before anything compiles, when the method (``AlgorithmEntry.single_labels``) or
  a label-flipping attack needs one class label per example and ``data``'s examples hold a
  label per token or a set of labels."""
  if data.global_test_y.ndim == 1:
    return
  holds = "label sets" if data.label_sets else "a label per token"
  if entry.single_labels:
    others = [n for n in ALGORITHMS.names() if not ALGORITHMS.get(n).single_labels]
    raise ValueError(
      f"algorithm.name must be one of {', '.join(others)} for data.source={config.data.source}, "
      f"whose examples hold {holds}; got {config.algorithm.name!r}, which labels samples of "
      "its own by class"
    )
  if config.attack.kind == "label_flip" and config.attack.fraction > 0:
    raise ValueError(
      f"attack.kind must not be label_flip for data.source={config.data.source}, whose "
      f"examples hold {holds} (it flips one class label per example)"
    )


def build_experiment(config: ExperimentConfig, data: FederatedData | None = None) -> Experiment:
  """Build the federation (unless ``data`` is given), the model, the setup and the algorithm.
  A given ``data`` must hold ``config.data.num_clients`` clients; every federation is checked
  (``FederatedData.validate``) before anything is compiled."""
  if data is not None and data.num_clients != config.data.num_clients:
    raise ValueError(
      f"data.num_clients must be the federation's client count {data.num_clients} when data "
      f"is given, got {config.data.num_clients}"
    )
  data = data if data is not None else build_federation(config.data)
  data.validate()
  check_evaluation_cost(config, data)
  sample = data.train.first_input()
  if MODELS.get(config.model.name).reads_tokens and not np.issubdtype(sample.dtype, np.integer):
    readers = [n for n in MODELS.names() if not MODELS.get(n).reads_tokens]
    raise ValueError(
      f"model.name must read {sample.dtype} features of shape {sample.shape[1:]} "
      f"(one of {', '.join(readers)}) for data.source={config.data.source}, got "
      f"{config.model.name!r}, which reads integer tokens"
    )
  entry = ALGORITHMS.get(config.algorithm.name)
  check_single_labels(config, entry, data)
  if config.attack.kind == "label_flip" and config.attack.fraction > 0:
    attackers = poisoning.malicious_clients(data.num_clients, config.attack.fraction, config.seed)
    data = poisoning.flip_labels(data, attackers)
  train_data = data.pooled() if entry.pooled else data
  execution = resolve_execution(config)
  model = build_model(
    config.model.name,
    data.num_classes,
    execution.conv,
    config.model.initialization,
    config.model.options,
  )
  check_model_reads(config, model, sample)
  sizes = train_data.train.num_examples
  schedule = LocalSchedule(
    config.local.batch_size,
    train_data.max_examples,
    config.local.epochs,
    config.local.steps,
    min_examples=int(sizes[sizes > 0].min(initial=1)),
  )
  setup = ClientSetup(
    model,
    sample,
    client_optimizer(
      config.local.optimizer,
      config.local.learning_rate,
      config.local.momentum,
      config.local.weight_decay,
    ),
    schedule,
    Executor(
      execution.strategy,
      config.execution.chunk_size,
      execution.threads,
      execution.clients_per_call,
    ),
    train_data.num_clients,
    execution.unroll,
    config.execution.compute_dtype,
    build_aggregator(config),
    train_data.client_groups,
    train_data.client_paths,
    config.algorithm.weighting,
  )
  algorithm = entry.build(setup, config.algorithm.options, config)
  check_state_fits(config, algorithm)
  return Experiment(config, data, train_data, model, setup, entry, algorithm)


def check_evaluation_cost(config: ExperimentConfig, data: FederatedData) -> None:
  """Refuse full client evaluation (``eval_clients=0``) of more than
  ``ON_DEMAND_FULL_EVALUATION`` clients made on demand that hold test splits."""
  on_demand = not isinstance(data.test, ClientArrays)
  if on_demand and config.eval_clients == 0 and data.num_clients > ON_DEMAND_FULL_EVALUATION:
    if data.test.total > 0:
      raise ValueError(
        f"eval_clients must be in [1, {data.num_clients}] for the {data.num_clients} clients "
        f"of data.source={config.data.source}, made on demand (evaluating every one would make "
        "every client at each evaluation), got 0; e.g. eval_clients=1000"
      )


def check_model_reads(config: ExperimentConfig, model, sample: np.ndarray) -> None:
  """One line refusing a model that cannot take the data's inputs (a CNN whose convolutions
  and pools leave nothing of an 8x8 image), found by initializing it abstractly
  (``jax.eval_shape``: nothing computed) before anything compiles."""
  try:
    jax.eval_shape(model.init, jax.random.key(0), sample[:1])
  except (ZeroDivisionError, ValueError, TypeError) as error:
    cause = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, ZeroDivisionError):  # a layer got a dimension of size 0
      cause = "its convolutions and pools shrink the input to nothing"
    raise ValueError(
      f"model.name={config.model.name!r} cannot read data.source={config.data.source}'s "
      f"inputs of shape {sample.shape[1:]} ({cause}); choose a model for inputs of that size"
    ) from None


def memory_limit() -> tuple[int, str]:
  """``(bytes, where)``: the memory the run's state lives in: this process's first device's memory
  when the backend reports it (GPU, TPU), else this host's physical memory."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"]), f"{device.device_kind} memory"
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host memory"


def check_state_fits(config: ExperimentConfig, algorithm: Algorithm) -> None:
  """Refuse, before anything compiles, a run whose state alone would take more than
  ``STATE_MEMORY_SHARE`` of ``memory_limit()`` (measured abstractly: ``jax.eval_shape`` of
  ``init``). The line names the state's largest part and the setting its rows count (a
  method's per-client state: ``data.num_clients``; FedBuff's slots: its ``concurrency``;
  error feedback's residuals: ``data.num_clients``), so a user knows what to shrink."""
  state = jax.eval_shape(algorithm.init, jax.random.key(0))
  state_bytes = tree_bytes(state)
  limit, where = memory_limit()
  if state_bytes > STATE_MEMORY_SHARE * limit:
    size = lambda count: (
      f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"
    )
    part, part_bytes, rows = largest_state_part(state)
    counted = settings_of_size(config, rows)
    per = f", a row per {counted}" if counted else ""
    raise ValueError(
      f"{counted or 'data.num_clients=' + str(config.data.num_clients)}: "
      f"algorithm.name={config.algorithm.name} would keep {size(state_bytes)} of state with "
      f"model.name={config.model.name}, more than {STATE_MEMORY_SHARE:.0%} of the "
      f"{size(limit)} of {where}; most of it is its {part} ({size(part_bytes)}{per}): lower that "
      "setting, use a smaller model, or a method without per-client state"
    )


def largest_state_part(state) -> tuple[str, int, int]:
  """``(name, bytes, leading axis)`` of the state's largest top-level part (an algorithm's
  field such as FedBuff's ``results``, or the aggregator's state)."""
  parts: dict[str, list] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = jax.tree_util.keystr(path[:1]).lstrip(".")
    parts.setdefault(name, []).append(leaf)
  name, leaves = max(parts.items(), key=lambda item: tree_bytes(item[1]))
  rows = max((leaf.shape[0] for leaf in leaves if leaf.shape), default=1)
  return name, tree_bytes(leaves), rows


def settings_of_size(config: ExperimentConfig, rows: int) -> str:
  """The setting that sizes state whose value is ``rows`` (``"algorithm.fedbuff.concurrency=
  5000"``): the method's options first, then the aggregation's and compression's,
  ``data.num_clients``, ``cohort_size``; "" where none is."""
  if rows <= 1:
    return ""
  fields = dotted_fields(config.to_dict())
  order = ("algorithm.", "aggregation.", "compression.", "data.num_clients", "cohort_size")
  for prefix in order:
    for field, value in fields.items():
      if field.startswith(prefix) and type(value) is int and value == rows:
        return f"{field}={rows}"
  return ""
