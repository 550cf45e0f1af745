"""Clients on demand: a federation whose clients are a pure function of (seed, client id).

``GeneratedClients`` is a ``ClientStore`` that holds no examples: it knows each client's row
range and makes the client's examples when a cohort or an evaluation block gathers it, so a
federation of a million clients costs its size array until clients are sampled, and the same
client is the same examples every time (resuming, evaluating, another process).

``synthetic_clients``: Synthetic(alpha, beta) of Li et al. (FedProx, 2020), as LEAF generates
it, one client at a time. Client ``k`` draws from ``default_rng([seed, k])``: u_k ~ N(0, alpha),
B_k ~ N(0, beta); W_k, b_k ~ N(u_k, 1); v_k[j] ~ N(B_k, 1); x ~ N(v_k, diag(j^-1.2));
y = argmax(W_k x + b_k). Sizes ~ lognormal(4, 2) + 50, at most ``MAX_CLIENT_EXAMPLES``, drawn
for every client at once from ``default_rng([seed, SIZE_STREAM])``. The last
``round(test_fraction * n_k)`` examples of a client are its test split. The global test set
pools every example of ``GLOBAL_TEST_CLIENTS`` clients outside the federation (ids
``num_clients, num_clients + 1, ...``): held-out clients, as cross-device evaluation uses.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import numpy as np

from fedjax_lab.data.federated import FederatedData
from fedjax_lab.data.ragged import ClientStore
from fedjax_lab.data.sources import synthetic_client

SIZE_STREAM = 0x512E
MAX_CLIENT_EXAMPLES = 2000
GLOBAL_TEST_CLIENTS = 200

# make(client_id) -> (x, y): every example of one client (train split, then test split)
ClientMaker = Callable[[int], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True, eq=False)
class GeneratedClients(ClientStore):
  """Client ``k``'s examples are rows ``starts[k] : stops[k]`` of ``make(k)`` (module doc)."""

  make: ClientMaker
  starts: np.ndarray  # [num_clients] int
  stops: np.ndarray  # [num_clients] int

  @functools.cached_property
  def num_examples(self) -> np.ndarray:
    return (self.stops - self.starts).astype(np.int32)

  def gather(self, client_ids) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for client in np.asarray(client_ids, np.int64):
      x, y = self.make(int(client))
      rows = slice(self.starts[client], self.stops[client])
      parts.append((x[rows], y[rows]))
    if not parts:
      x, y = self.make(0)
      return x[:0], y[:0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  def first_input(self) -> np.ndarray:
    x, _ = self.make(0)
    return x[:1]


def synthetic_sizes(seed: int, num_clients: int) -> np.ndarray:
  """``[num_clients]``: LEAF's client sizes, lognormal(4, 2) + 50, at most
  ``MAX_CLIENT_EXAMPLES``."""
  rng = np.random.default_rng([seed, SIZE_STREAM])
  return (rng.lognormal(4, 2, num_clients).astype(np.int64) + 50).clip(max=MAX_CLIENT_EXAMPLES)


# Bytes a client made on demand costs before any example exists: its size drawn in float64,
# kept as int64, its train and test bounds (int64 each).
BOOKKEEPING_BYTES_PER_CLIENT = 8 * 5
# The share of host memory the per-client bookkeeping may take.
BOOKKEEPING_MEMORY_SHARE = 0.5


def check_bookkeeping_fits(num_clients: int) -> None:
  """One line refusing a federation whose per-client bookkeeping alone
  (``BOOKKEEPING_BYTES_PER_CLIENT`` a client) would take more than
  ``BOOKKEEPING_MEMORY_SHARE`` of this host's memory, before anything is allocated."""
  needed = num_clients * BOOKKEEPING_BYTES_PER_CLIENT
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if needed > BOOKKEEPING_MEMORY_SHARE * memory:
    most = int(BOOKKEEPING_MEMORY_SHARE * memory // BOOKKEEPING_BYTES_PER_CLIENT)
    raise ValueError(
      f"data.num_clients={num_clients}: the clients' sizes and bounds alone take "
      f"{needed / 2**30:.1f} GiB ({BOOKKEEPING_BYTES_PER_CLIENT} bytes a client), more than "
      f"{BOOKKEEPING_MEMORY_SHARE:.0%} of this host's {memory / 2**30:.1f} GiB; at most about "
      f"{most:,} clients fit here"
    )


def synthetic_clients(
  num_clients: int,
  seed: int,
  *,
  alpha: float = 1.0,
  beta: float = 1.0,
  test_fraction: float = 0.1,
  dim: int = 60,
  num_classes: int = 10,
) -> FederatedData:
  """A federation of ``num_clients`` synthetic clients made on demand (module docstring)."""
  if alpha < 0 or beta < 0:
    raise ValueError(
      "data.synthetic_clients.alpha and data.synthetic_clients.beta must be >= 0, got "
      f"{alpha}, {beta}"
    )
  check_bookkeeping_fits(num_clients)
  every_size = synthetic_sizes(seed, num_clients + GLOBAL_TEST_CLIENTS)
  make = lambda client: synthetic_client(
    np.random.default_rng([seed, client]), int(every_size[client]), alpha, beta, dim, num_classes
  )
  sizes = every_size[:num_clients]
  num_test = np.round(test_fraction * sizes).astype(np.int64)
  train = GeneratedClients(make, np.zeros(num_clients, np.int64), sizes - num_test)
  test = GeneratedClients(make, sizes - num_test, sizes)
  outside = np.arange(num_clients, num_clients + GLOBAL_TEST_CLIENTS)
  held_out = GeneratedClients(make, np.zeros(len(every_size), np.int64), every_size)
  global_x, global_y = held_out.gather(outside)
  return FederatedData(train, test, global_x, global_y, num_classes)
