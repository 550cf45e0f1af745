"""Unlabeled proxy inputs for server-side distillation (FedDF): images no client holds.

``digits``: scikit-learn's 1,797 8x8 handwritten digits in [0, 1], resized bilinearly to the
model's input height and width and repeated over its channels, an out-of-domain unlabeled set
for the 28x28 image benchmarks (as FedDF distills CIFAR-10 models on CIFAR-100 or STL-10
images); ``noise``: uniform [0, 1] images, the weakest proxy.
"""

from __future__ import annotations

import numpy as np

PROXIES = ("digits", "noise")


def unlabeled_images(name: str, shape: tuple[int, ...], count: int, seed: int) -> np.ndarray:
  """``[count, *shape]`` float32 proxy images (``shape`` is ``(H, W, C)``); ``digits`` draws
  ``count`` distinct images with ``seed`` (at most 1,797)."""
  if len(shape) != 3:
    raise ValueError(
      f"algorithm.feddf.proxy needs image inputs (height, width, channels), got inputs {shape}"
    )
  rng = np.random.default_rng(seed)
  if name == "noise":
    return rng.random((count, *shape), dtype=np.float32)
  import jax
  from sklearn.datasets import load_digits

  images = (load_digits().images / 16.0).astype(np.float32)
  if count > len(images):
    raise ValueError(f"algorithm.feddf.proxy_size must be <= {len(images)} for digits, got {count}")
  chosen = images[rng.permutation(len(images))[:count]]
  height, width, channels = shape
  resized = np.asarray(jax.image.resize(chosen, (count, height, width), "bilinear"))
  return np.repeat(resized[..., None], channels, axis=-1).clip(0.0, 1.0)
