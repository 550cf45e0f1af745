"""The cohort axis sharded over devices: one ``jax.sharding.Mesh`` axis named ``clients``.

Cohort arrays (``[cohort, ...]``) are split evenly over the mesh; the server state is
replicated. The round program is unchanged: XLA's SPMD partitioner runs each device's share of
the vmapped clients and turns the sums over clients into all-reduces, so 1 or N devices compute
the same function (tests/test_sharding.py). Across processes (hosts), call
``jax.distributed.initialize`` first; ``jax.devices()`` then lists every process's devices,
every process builds the same federation and state from the same config, keeps only its own
clients' data (``FederatedData.shard``: client ``k`` on process ``k % processes``), and
``shard_clients`` / ``replicate`` keep each process's own shards of the rest
(``jax.make_array_from_callback``);
tests/test_distributed.py runs two processes (docs/performance.md).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CLIENT_AXIS = "clients"


def client_mesh(num_devices: int) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices."""
  available = jax.device_count()
  if num_devices > available:
    raise ValueError(
      f"execution.devices={num_devices} but only {available} "
      f"{jax.default_backend()} device(s) are visible"
    )
  return Mesh(np.asarray(jax.devices()[:num_devices]), (CLIENT_AXIS,))


def client_sharding(mesh: Mesh) -> NamedSharding:
  """The layout of cohort arrays: the leading (client) axis split over the mesh."""
  return NamedSharding(mesh, PartitionSpec(CLIENT_AXIS))


def shard_clients(tree, mesh: Mesh):
  """Place every leaf with its leading (client) axis split over the mesh."""
  return jax.tree.map(lambda leaf: _place(leaf, client_sharding(mesh)), tree)


def replicate(tree, mesh: Mesh):
  """Place every leaf whole on every device of the mesh."""
  return jax.tree.map(lambda leaf: _place(leaf, NamedSharding(mesh, PartitionSpec())), tree)


def _place(leaf, sharding: NamedSharding):
  """``leaf`` as a global array with ``sharding``. With several processes each one passes the
  same whole value and keeps the shards of its own devices (typed PRNG keys through their
  key data). A global array already laid out so (a cohort placed by ``FederatedData.cohort``)
  is returned as it is."""
  if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
    return leaf
  if jax.process_count() == 1:
    return jax.device_put(leaf, sharding)
  if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_place(jax.random.key_data(leaf), sharding))
  value = np.asarray(leaf)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def addressable(tree):
  """``tree`` readable by this process: a leaf spread over other processes' devices (fully
  replicated, as the state and metrics are) becomes this process's own copy; every other leaf
  is returned as it is, so a single-process run copies nothing."""
  return jax.tree.map(
    lambda leaf: (
      leaf.addressable_data(0)
      if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
      else leaf
    ),
    tree,
  )
