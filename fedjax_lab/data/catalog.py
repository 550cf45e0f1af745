"""The data registries, each of ``DataEntry(build, options)``: ``SOURCES`` (``build(data_config,
options) -> Dataset``), ``PARTITIONERS`` (``build(dataset, data_config, options) -> list of
client index arrays``) and ``FEDERATIONS`` (``build(data_config, options) -> FederatedData``:
sources whose clients are given, as LEAF's and TFF's files and clients made on demand are;
their partition is ``natural``).

``data_config`` is the run's ``config.DataConfig``, read for the fields every source shares;
``options`` is the entry's own dataclass, the config table ``data.<name>``
(``data.dirichlet.alpha``, ``data.synthetic.beta``). A TFDS source is ``tfds:<catalog
name>``; a variant such as ``tfds:emnist/byclass`` uses its base's entry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from fedjax_lab.checks import require
from fedjax_lab.data import code_files, generated, leaf, partition, sources, text_world, tff
from fedjax_lab.registry import NoOptions, Registry


@dataclasses.dataclass(frozen=True)
class DataEntry:
  """A registered source, federation or partitioner: ``build`` (module docstring) and the
  dataclass of its ``options``."""

  build: Callable
  options: type = NoOptions


SOURCES: Registry[DataEntry] = Registry("data.source")
PARTITIONERS: Registry[DataEntry] = Registry("data.partition")
FEDERATIONS: Registry[DataEntry] = Registry("data.source")


class SourceChoices:
  """Every name ``data.source`` may take, as one registry: ``SOURCES``, ``FEDERATIONS`` and the
  variants of the TFDS sources (``tfds:a/b`` uses ``tfds:a``'s entry)."""

  field = "data.source"

  def get(self, name: str) -> DataEntry:
    if name in FEDERATIONS:
      return FEDERATIONS.get(name)
    if name not in SOURCES and name.startswith("tfds:") and name.split("/")[0] in SOURCES:
      return SOURCES.get(name.split("/")[0])
    if name not in SOURCES:
      raise ValueError(f"data.source must be one of {', '.join(self.names())}, got {name!r}")
    return SOURCES.get(name)

  def names(self) -> tuple[str, ...]:
    return (*SOURCES.names(), *FEDERATIONS.names())

  def __contains__(self, name) -> bool:
    try:
      self.get(name)
    except ValueError:
      return False
    return True

  def __iter__(self):
    return iter(self.names())


SOURCE_CHOICES = SourceChoices()


@dataclasses.dataclass(frozen=True)
class DirichletOptions:
  """``data.dirichlet`` / ``data.dirichlet_capped``: the label concentration ``alpha`` and the
  ``min_examples`` every client must get (the split is redrawn until it does)."""

  alpha: float = 0.5
  min_examples: int = 10

  def __post_init__(self):
    require(self.alpha > 0 and math.isfinite(self.alpha), "data.dirichlet.alpha", "> 0", self.alpha)
    require(self.min_examples >= 1, "data.dirichlet.min_examples", ">= 1", self.min_examples)


@dataclasses.dataclass(frozen=True)
class ShardsOptions:
  """``data.shards``: the label shards (``classes_per_client``) each client gets."""

  classes_per_client: int = 2

  def __post_init__(self):
    require(
      self.classes_per_client >= 1,
      "data.shards.classes_per_client",
      ">= 1",
      self.classes_per_client,
    )


@dataclasses.dataclass(frozen=True)
class QuantitySkewOptions:
  """``data.quantity_skew``: the log-normal ``sigma`` of the clients' sizes."""

  sigma: float = 1.0

  def __post_init__(self):
    require(self.sigma >= 0, "data.quantity_skew.sigma", ">= 0", self.sigma)


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
  """``data.synthetic`` / ``data.synthetic_clients``: LEAF's Synthetic(``alpha``, ``beta``):
  how much the clients' models and their inputs differ."""

  alpha: float = 1.0
  beta: float = 1.0

  def __post_init__(self):
    for name in ("alpha", "beta"):
      value = getattr(self, name)
      finite = isinstance(value, (int, float)) and math.isfinite(value)
      require(finite and value >= 0, f"data.synthetic.{name}", "a finite number >= 0", value)


@dataclasses.dataclass(frozen=True)
class TextWorldOptions:
  """``data.tfds_text``: ``spec``, the JSON file of groups and their TFDS datasets (required
  when the source is selected: ``config.DataConfig`` checks it)."""

  spec: str = ""


def _tfds(data, options) -> sources.Dataset:
  return sources.tfds_source(
    data.source.removeprefix("tfds:"),
    data_dir=data.source_dir or None,
    coarse_labels=data.coarse_labels,
  )


def _single_labels(data, labels: np.ndarray) -> np.ndarray:
  if labels.ndim != 1:
    raise ValueError(
      f"data.partition={data.partition!r} needs one label per example; "
      "use 'natural' or 'iid' for sequence data"
    )
  return labels


def _dirichlet(dataset, data, options: DirichletOptions, balance_cap: bool):
  return partition.dirichlet(
    _single_labels(data, dataset.train_y),
    data.num_clients,
    options.alpha,
    data.seed,
    min_examples=options.min_examples,
    balance_cap=balance_cap,
  )


def _natural(dataset, data, options) -> partition.ClientIndices:
  """One client per natural group; a random ``data.num_clients`` of them if there are more."""
  if dataset.train_groups is None:
    raise ValueError(
      f"data.partition='natural' needs a source with natural groups "
      f"(synthetic, shakespeare, text_world); {data.source} has none"
    )
  clients = partition.natural(dataset.train_groups)
  if len(clients) < data.num_clients:
    raise ValueError(
      f"data.num_clients={data.num_clients} exceeds the {len(clients)} natural "
      f"groups of {data.source}"
    )
  if len(clients) == data.num_clients:
    return clients
  chosen = np.random.default_rng(data.seed).choice(len(clients), data.num_clients, replace=False)
  return [clients[k] for k in np.sort(chosen)]


SOURCES.register("digits", DataEntry(lambda data, o: sources.digits(data.seed)))
SOURCES.register(
  "fashion_mnist_idx",
  DataEntry(lambda data, o: sources.fashion_mnist_idx(data.source_dir or None)),
)
SOURCES.register(
  "synthetic",
  DataEntry(
    lambda data, o: sources.synthetic(o.alpha, o.beta, data.num_clients, data.seed),
    SyntheticOptions,
  ),
)
SOURCES.register(
  "shakespeare",
  DataEntry(
    lambda data, o: sources.shakespeare(data.source_dir or "data/shakespeare", seed=data.seed)
  ),
)
SOURCES.register(
  "shakespeare_genre",
  DataEntry(
    lambda data, o: sources.shakespeare_genre(data.source_dir or "data/shakespeare", seed=data.seed)
  ),
)
SOURCES.register(
  "text_world",
  DataEntry(
    lambda data, o: text_world.text_world(
      text_world.world_documents(data.source_dir or "data/shakespeare"), seed=data.seed
    )
  ),
)
SOURCES.register(  # paper scale: a world of TFDS text datasets (data.tfds_text.spec, a JSON file)
  "tfds_text",
  DataEntry(
    lambda data, o: text_world.text_world(
      text_world.tfds_documents(o.spec, data.source_dir or None),
      sequence_length=data.sequence_length,
      max_client_bytes=data.max_client_bytes,
      seed=data.seed,
    ),
    TextWorldOptions,
  ),
)
for _name in sources.TFDS_DATASETS:
  SOURCES.register(f"tfds:{_name}", DataEntry(_tfds))

FEDERATIONS.register(
  "synthetic_clients",
  DataEntry(
    lambda data, o: generated.synthetic_clients(
      data.num_clients, data.seed, alpha=o.alpha, beta=o.beta, test_fraction=data.test_fraction
    ),
    SyntheticOptions,
  ),
)
FEDERATIONS.register(
  "python_files",
  DataEntry(
    lambda data, o: code_files.python_files(
      data.source_dir or None,
      sequence_length=data.sequence_length,
      max_client_bytes=data.max_client_bytes,
      test_fraction=data.test_fraction,
      seed=data.seed,
    )
  ),
)
FEDERATIONS.register(
  "leaf",
  DataEntry(
    lambda data, o: leaf.leaf_federation(data.source_dir or "data/leaf", o), leaf.LeafOptions
  ),
)
FEDERATIONS.register(
  "tff_h5",
  DataEntry(
    lambda data, o: tff.tff_federation(
      data.source_dir or "data/tff", data.sequence_length, data.coarse_labels, o
    ),
    tff.TffOptions,
  ),
)

PARTITIONERS.register(
  "iid",
  DataEntry(
    lambda dataset, data, o: partition.iid(len(dataset.train_y), data.num_clients, data.seed)
  ),
)
PARTITIONERS.register(
  "dirichlet", DataEntry(lambda d, data, o: _dirichlet(d, data, o, False), DirichletOptions)
)
PARTITIONERS.register(
  "dirichlet_capped",
  DataEntry(lambda d, data, o: _dirichlet(d, data, o, True), DirichletOptions),
)
PARTITIONERS.register(
  "shards",
  DataEntry(
    lambda dataset, data, o: partition.shards(
      _single_labels(data, dataset.train_y), data.num_clients, o.classes_per_client, data.seed
    ),
    ShardsOptions,
  ),
)
PARTITIONERS.register(
  "quantity_skew",
  DataEntry(
    lambda dataset, data, o: partition.quantity_skew(
      len(dataset.train_y), data.num_clients, o.sigma, data.seed
    ),
    QuantitySkewOptions,
  ),
)
PARTITIONERS.register("natural", DataEntry(_natural))
