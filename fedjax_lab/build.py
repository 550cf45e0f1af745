"""From a config to the objects a run needs: the federation, the model, the client setup
(optimizer, schedule, executor, aggregator) and the algorithm. ``run.py`` keeps the loop."""

from __future__ import annotations

import dataclasses

import jax
import optax

from fedjax_lab.algorithms import ALGORITHMS, Algorithm, AlgorithmEntry, ClientSetup
from fedjax_lab.config import AggregationConfig, DataConfig, ExperimentConfig
from fedjax_lab.data import FederatedData, groups, partition
from fedjax_lab.data.catalog import PARTITIONERS, lookup_source
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import Model, build_model
from fedjax_lab.ops.aggregators import AGGREGATORS, Aggregator, chain, clip_update_norm

# Compile time grows linearly with unrolled steps (FEMNIST CNN: 4.6 s rolled, 15.9 s for 40
# unrolled steps) while each step runs 5x faster (16.6 ms against 83 ms): unrolling pays after a
# round or two even at this length.
MAX_UNROLLED_STEPS = 256


def build_federation(data: DataConfig) -> FederatedData:
  """Source, partition and per-client train/test split, as the config says; then the latent
  group shift (``data.latent_groups``), or Shakespeare's genres as known client groups."""
  dataset = lookup_source(data.source)(data)
  clients = PARTITIONERS.get(data.partition)(dataset, data)
  if data.max_client_examples > 0:
    clients = [indices[: data.max_client_examples] for indices in clients]
  train, test = partition.train_test_split(clients, data.test_fraction, data.seed + 1)
  federation = FederatedData.from_indices(dataset, train, test)
  if data.latent_groups > 0:
    return groups.shift_by_group(
      federation,
      groups.contiguous_groups(data.num_clients, data.latent_groups),
      data.group_shift,
      data.seed + 2,
    )
  if data.source == "shakespeare" and data.partition == "natural":
    names = [dataset.group_names[dataset.train_groups[indices[0]]] for indices in clients]
    return dataclasses.replace(federation, client_groups=groups.shakespeare_genres(names))
  return federation


def resolve_execution(config: ExperimentConfig, model: Model, max_steps: int) -> tuple[str, bool]:
  """``auto`` rules: vmap everywhere except convolutional models on CPU, which use the per-client
  loop with fully unrolled local steps (up to ``MAX_UNROLLED_STEPS``) because XLA:CPU runs
  vmapped per-client convolutions, and convolutions inside any loop (``lax.scan``, even partly
  unrolled), several times slower (docs/performance.md)."""
  conv_on_cpu = jax.default_backend() == "cpu" and model.has_conv
  strategy = config.execution.strategy
  if strategy == "auto":
    strategy = "loop" if conv_on_cpu else "vmap"
  unroll = config.execution.unroll
  if unroll == "auto":
    unroll = "unroll" if conv_on_cpu and max_steps <= MAX_UNROLLED_STEPS else "scan"
  return strategy, unroll == "unroll"


def client_optimizer(name: str, learning_rate: float, momentum: float):
  """``local.optimizer``: SGD (with momentum if > 0) or Adam."""
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=momentum or None)
  return optax.adam(learning_rate)


def build_aggregator(aggregation: AggregationConfig) -> Aggregator:
  """The ``aggregation.rule``, after per-client update clipping if ``clip_norm > 0``."""
  reducer = AGGREGATORS.get(aggregation.rule)()
  if aggregation.clip_norm > 0:
    return chain(clip_update_norm(aggregation.clip_norm), reducer)
  return reducer


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


def build_experiment(config: ExperimentConfig, data: FederatedData | None = None) -> Experiment:
  """Build the federation (unless ``data`` is given), the model, the setup and the algorithm."""
  data = data if data is not None else build_federation(config.data)
  entry = ALGORITHMS.get(config.algorithm.name)
  train_data = data.pooled() if entry.pooled else data
  model = build_model(config.model.name, data.num_classes, config.model.conv)
  schedule = LocalSchedule(
    config.local.batch_size, train_data.max_examples, config.local.epochs, config.local.steps
  )
  strategy, unroll = resolve_execution(config, model, schedule.max_steps)
  setup = ClientSetup(
    model,
    train_data.train_x[0, :1],
    client_optimizer(config.local.optimizer, config.local.learning_rate, config.local.momentum),
    schedule,
    Executor(strategy, config.execution.chunk_size),
    train_data.num_clients,
    unroll,
    config.execution.compute_dtype,
    build_aggregator(config.aggregation),
    train_data.client_groups,
  )
  algorithm = entry.build(setup, config.algorithm.options, config)
  return Experiment(config, data, train_data, model, setup, entry, algorithm)
