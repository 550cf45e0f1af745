"""Data poisoning: a fixed set of malicious clients trains on corrupted labels."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedjax_lab.data.federated import FederatedData


def malicious_clients(num_clients: int, fraction: float, seed: int) -> np.ndarray:
  """``floor(fraction * num_clients)`` client ids, chosen by ``seed``, sorted."""
  rng = np.random.default_rng([seed, 0xBAD])
  return np.sort(rng.choice(num_clients, int(fraction * num_clients), replace=False))


def flip_labels(federation: FederatedData, clients: np.ndarray) -> FederatedData:
  """The federation with ``clients``' training labels flipped, ``y -> C - 1 - y`` (Tolpegin et
  al. 2020); their test splits keep the true labels, which is what evaluation measures."""
  train, _ = federation.arrays("attack.kind=label_flip")
  flipped = np.isin(train.client_of_rows(), clients)
  labels = np.array(train.y)
  labels[flipped] = federation.num_classes - 1 - labels[flipped]
  return dataclasses.replace(federation, train=train.replace_rows(y=labels))
