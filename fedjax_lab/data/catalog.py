"""The data registries: ``SOURCES`` (name -> ``load(data_config) -> Dataset``),
``PARTITIONERS`` (name -> ``split(dataset, data_config) -> list of client index arrays``) and
``FEDERATIONS`` (name -> ``load(data_config) -> FederatedData``: sources whose clients are
given, as LEAF's and TFF's files and clients made on demand are; their partition is
``natural``).

``data_config`` is the run's ``config.DataConfig``, read for its fields only. A TFDS source is
``tfds:<catalog name>``; a variant such as ``tfds:emnist/byclass`` uses its base's entry.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedjax_lab.data import code_files, generated, leaf, partition, sources, text_world, tff
from fedjax_lab.data.federated import FederatedData
from fedjax_lab.registry import Registry

Loader = Callable[[object], sources.Dataset]
Partitioner = Callable[[sources.Dataset, object], partition.ClientIndices]
FederationLoader = Callable[[object], FederatedData]

SOURCES: Registry[Loader] = Registry("data.source")
PARTITIONERS: Registry[Partitioner] = Registry("data.partition")
FEDERATIONS: Registry[FederationLoader] = Registry("data.source")


def lookup_source(name: str) -> Loader:
  """The loader registered for ``name``, or for the base of a TFDS variant (``tfds:a/b``)."""
  if name not in SOURCES and name.startswith("tfds:") and name.split("/")[0] in SOURCES:
    return SOURCES.get(name.split("/")[0])
  return SOURCES.get(name)


def _tfds(data) -> sources.Dataset:
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


def _dirichlet(dataset, data, balance_cap: bool) -> partition.ClientIndices:
  return partition.dirichlet(
    _single_labels(data, dataset.train_y),
    data.num_clients,
    data.alpha,
    data.seed,
    min_examples=data.min_examples,
    balance_cap=balance_cap,
  )


def _natural(dataset, data) -> partition.ClientIndices:
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


SOURCES.register("digits", lambda data: sources.digits(data.seed))
SOURCES.register(
  "fashion_mnist_idx", lambda data: sources.fashion_mnist_idx(data.source_dir or None)
)
SOURCES.register(
  "synthetic",
  lambda data: sources.synthetic(
    data.synthetic_alpha, data.synthetic_beta, data.num_clients, data.seed
  ),
)
SOURCES.register(
  "shakespeare",
  lambda data: sources.shakespeare(data.source_dir or "data/shakespeare", seed=data.seed),
)
SOURCES.register(
  "shakespeare_genre",
  lambda data: sources.shakespeare_genre(data.source_dir or "data/shakespeare", seed=data.seed),
)
SOURCES.register(
  "text_world",
  lambda data: text_world.text_world(
    text_world.world_documents(data.source_dir or "data/shakespeare"), seed=data.seed
  ),
)
SOURCES.register(  # paper scale: a world of TFDS text datasets (data.text_spec, a JSON file)
  "tfds_text",
  lambda data: text_world.text_world(
    text_world.tfds_documents(data.text_spec, data.source_dir or None),
    sequence_length=data.sequence_length,
    max_client_bytes=data.max_client_bytes,
    seed=data.seed,
  ),
)
for _name in sources.TFDS_DATASETS:
  SOURCES.register(f"tfds:{_name}", _tfds)

FEDERATIONS.register(
  "synthetic_clients",
  lambda data: generated.synthetic_clients(
    data.num_clients,
    data.seed,
    alpha=data.synthetic_alpha,
    beta=data.synthetic_beta,
    test_fraction=data.test_fraction,
  ),
)
FEDERATIONS.register(
  "python_files",
  lambda data: code_files.python_files(
    data.source_dir or None,
    sequence_length=data.sequence_length,
    max_client_bytes=data.max_client_bytes,
    test_fraction=data.test_fraction,
    seed=data.seed,
  ),
)
FEDERATIONS.register("leaf", lambda data: leaf.leaf_federation(data.source_dir or "data/leaf"))
FEDERATIONS.register(
  "tff_h5",
  lambda data: tff.tff_federation(
    data.source_dir or "data/tff", data.sequence_length, data.coarse_labels
  ),
)

PARTITIONERS.register(
  "iid", lambda dataset, data: partition.iid(len(dataset.train_y), data.num_clients, data.seed)
)
PARTITIONERS.register("dirichlet", lambda dataset, data: _dirichlet(dataset, data, False))
PARTITIONERS.register("dirichlet_capped", lambda dataset, data: _dirichlet(dataset, data, True))
PARTITIONERS.register(
  "shards",
  lambda dataset, data: partition.shards(
    _single_labels(data, dataset.train_y), data.num_clients, data.classes_per_client, data.seed
  ),
)
PARTITIONERS.register(
  "quantity_skew",
  lambda dataset, data: partition.quantity_skew(
    len(dataset.train_y), data.num_clients, data.sigma, data.seed
  ),
)
PARTITIONERS.register("natural", _natural)
