"""Partitioners: pure, seeded functions from labels (or group ids) to per-client index arrays.

Every partitioner returns ``list[np.ndarray]`` of length ``num_clients``; entry ``k`` holds the
indices (into the pooled example array) owned by client ``k``. Clients are disjoint and together
cover the examples they were given (``shards`` may drop a remainder smaller than one shard).
"""

from __future__ import annotations

import numpy as np

ClientIndices = list[np.ndarray]


def _check_counts(num_examples: int, num_clients: int) -> None:
  if num_clients < 1:
    raise ValueError(f"data.num_clients must be >= 1, got {num_clients}")
  if num_clients > num_examples:
    raise ValueError(
      f"data.num_clients={num_clients} exceeds the {num_examples} examples available: "
      "every client needs at least one example"
    )


def iid(num_examples: int, num_clients: int, seed: int) -> ClientIndices:
  """Shuffle, then split into ``num_clients`` near-equal parts."""
  _check_counts(num_examples, num_clients)
  order = np.random.default_rng(seed).permutation(num_examples)
  return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet(
  labels: np.ndarray,
  num_clients: int,
  alpha: float,
  seed: int,
  *,
  min_examples: int = 10,
  max_retries: int = 100,
  balance_cap: bool = False,
) -> ClientIndices:
  """Label skew: for each class c, proportions p_c ~ Dir(alpha * 1_K) split its examples.

  Redraws the whole split until every client has ``min_examples`` (at most ``max_retries``
  draws, then ``ValueError``). With ``balance_cap`` (the MOON / FedMR code's variant) a client
  that already holds ``>= N / K`` examples gets proportion 0 for the remaining classes.
  """
  labels = np.asarray(labels)
  _check_counts(len(labels), num_clients)
  if not alpha > 0:
    raise ValueError(f"data.dirichlet.alpha must be > 0, got {alpha}")
  if min_examples * num_clients > len(labels):
    raise ValueError(
      f"data.dirichlet.min_examples={min_examples} x data.num_clients={num_clients} exceeds the "
      f"{len(labels)} examples available"
    )
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  cap = len(labels) / num_clients
  for _ in range(max_retries):
    owned: list[list[int]] = [[] for _ in range(num_clients)]
    for c in classes:
      members = rng.permutation(np.flatnonzero(labels == c))
      proportions = rng.dirichlet(np.full(num_clients, alpha))
      if balance_cap:
        sizes = np.array([len(o) for o in owned])
        capped = proportions * (sizes < cap)
        if capped.sum() > 0:  # else every client with mass is full: keep the draw (no 0 / 0)
          proportions = capped / capped.sum()
      cuts = (np.cumsum(proportions) * len(members)).astype(int)[:-1]
      for client, part in enumerate(np.split(members, cuts)):
        owned[client].extend(part.tolist())
    if min(len(o) for o in owned) >= min_examples:
      return [np.sort(np.asarray(o, dtype=np.int64)) for o in owned]
  raise ValueError(
    f"Dirichlet partition with data.dirichlet.alpha={alpha} gave some client fewer than "
    f"data.dirichlet.min_examples={min_examples} examples in {max_retries} draws; raise alpha, "
    "lower min_examples or use fewer clients"
  )


def shards(
  labels: np.ndarray, num_clients: int, classes_per_client: int, seed: int
) -> ClientIndices:
  """Pathological non-IID (McMahan et al. 2017): sort by label, cut into
  ``num_clients * classes_per_client`` shards, give each client ``classes_per_client`` shards."""
  labels = np.asarray(labels)
  num_shards = num_clients * classes_per_client
  if num_shards > len(labels):
    raise ValueError(
      f"data.num_clients={num_clients} x data.shards.classes_per_client={classes_per_client} "
      f"shards exceed the {len(labels)} examples available: every shard needs at least one example"
    )
  rng = np.random.default_rng(seed)
  by_label = np.argsort(labels, kind="stable")
  shard_size = len(labels) // num_shards
  pieces = by_label[: shard_size * num_shards].reshape(num_shards, shard_size)
  assignment = rng.permutation(num_shards).reshape(num_clients, classes_per_client)
  return [np.sort(pieces[row].ravel()) for row in assignment]


def quantity_skew(
  num_examples: int, num_clients: int, sigma: float, seed: int, *, min_examples: int = 1
) -> ClientIndices:
  """IID labels, log-normal(0, sigma) client sizes, each client at least ``min_examples``."""
  _check_counts(num_examples, num_clients)
  if not 0 <= sigma < np.inf:
    raise ValueError(f"data.quantity_skew.sigma must be a finite number >= 0, got {sigma}")
  if min_examples * num_clients > num_examples:
    raise ValueError(
      f"{min_examples} examples for each of data.num_clients={num_clients} clients "
      f"exceed the {num_examples} examples available"
    )
  rng = np.random.default_rng(seed)
  log_weights = sigma * rng.standard_normal(num_clients)  # log of lognormal(0, sigma) draws
  shares = np.exp(log_weights - log_weights.max())  # normalized in log space: no overflow
  spare = num_examples - min_examples * num_clients
  sizes = min_examples + np.floor(shares / shares.sum() * spare).astype(int)
  sizes[: num_examples - sizes.sum()] += 1  # hand out the rounding remainder
  order = rng.permutation(num_examples)
  return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def natural(group_ids: np.ndarray) -> ClientIndices:
  """One client per distinct group id (writer, speaker, ...), in sorted group order."""
  group_ids = np.asarray(group_ids)
  return [np.flatnonzero(group_ids == g) for g in np.unique(group_ids)]


def train_test_split(
  client_indices: ClientIndices, test_fraction: float, seed: int
) -> tuple[ClientIndices, ClientIndices]:
  """Split each client's examples at random into a train and a test part (same distribution).

  A client with at least 2 examples keeps at least one on each side. Asserts disjointness.
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"data.test_fraction must be in [0, 1), got {test_fraction}")
  rng = np.random.default_rng(seed)
  train, test = [], []
  for indices in client_indices:
    shuffled = rng.permutation(indices)
    num_test = int(round(test_fraction * len(indices)))
    if test_fraction > 0 and len(indices) >= 2:
      num_test = min(max(num_test, 1), len(indices) - 1)
    test.append(np.sort(shuffled[:num_test]))
    train.append(np.sort(shuffled[num_test:]))
    assert not np.intersect1d(train[-1], test[-1]).size, "train/test overlap"
  return train, test
