"""The cohort axis sharded over devices: one ``jax.sharding.Mesh`` axis named ``clients``.

Cohort arrays (``[cohort, ...]``) are split evenly over the mesh; the server state is
replicated. The round program is unchanged: XLA's SPMD partitioner runs each device's share of
the vmapped clients and turns the sums over clients into all-reduces, so 1 or N devices compute
the same function (tests/test_sharding.py). Across hosts, call ``jax.distributed.initialize``
first; ``jax.devices()`` then lists every host's devices (docs/performance.md).
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


def shard_clients(tree, mesh: Mesh):
  """Place every leaf with its leading (client) axis split over the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(CLIENT_AXIS)))


def replicate(tree, mesh: Mesh):
  """Place every leaf whole on every device of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
