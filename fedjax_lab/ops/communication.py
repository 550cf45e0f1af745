"""Byte counting for what a round actually sends."""

from __future__ import annotations

import jax
import numpy as np


def tree_bytes(tree) -> int:
  """Bytes of one copy of ``tree`` (sum over leaves of size x itemsize); static shapes only."""
  return int(
    sum(np.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))
  )
