"""PyTorch's default initialization of linear and convolutional layers, for Flax parameters.

``nn.Linear`` and ``nn.Conv2d`` draw (``reset_parameters``: ``kaiming_uniform_`` with
``a = sqrt(5)``, then the bias from the same fan-in)

    kernel, bias ~ U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)),   fan_in = prod(kernel.shape[:-1])

where Flax draws kernels from LeCun normal and zero biases. Papers whose official code is
PyTorch (FedMR's) train from this initialization; ``model.initialization=torch`` reproduces it.
"""

from __future__ import annotations

import math

import jax


def torch_default_init(params: dict, key: jax.Array) -> dict:
  """``params`` with every ``{'kernel', 'bias'?}`` layer of a 2-D (Dense: in, out) or 4-D
  (Conv: HWIO) kernel redrawn as the module docstring says; other leaves (norms, embeddings,
  multi-head projections' 3-D kernels) kept."""
  counter = iter(range(1 << 30))

  def redraw(tree):
    if not isinstance(tree, dict):
      return tree
    if "kernel" in tree and getattr(tree["kernel"], "ndim", 0) in (2, 4):
      kernel = tree["kernel"]
      bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
      layer_key = jax.random.fold_in(key, next(counter))
      out = dict(tree)
      for index, name in enumerate(("kernel", "bias")):
        if name in tree:
          leaf = tree[name]
          out[name] = jax.random.uniform(
            jax.random.fold_in(layer_key, index), leaf.shape, leaf.dtype, -bound, bound
          )
      return out
    return {name: redraw(child) for name, child in tree.items()}

  return redraw(params)
