"""Model registry. The engine sees a model only through ``Model``: ``init``, ``apply`` and the
ordered ``layer_groups`` that layer-wise methods recombine, personalize or prune."""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_lab.models.im2col import apply_im2col
from fedjax_lab.models.sequence import CharLSTM, TransformerLM
from fedjax_lab.models.vision import MLP, VGG, VGG16_LAYOUT, CifarCNN, FedAvgCNN, ResNet20

Params = dict


@dataclasses.dataclass(frozen=True)
class Model:
  """A Flax module seen as pure functions. ``params`` is the module's ``'params'`` collection.
  ``conv``: how convolutions are computed, ``xla`` (``lax.conv``) or ``im2col`` (matrix
  products, models/im2col.py); the parameters are the same either way."""
  name: str
  module: nn.Module
  has_conv: bool
  conv: str = "xla"

  def init(self, key: jax.Array, sample_x) -> Params:
    """Parameters for inputs shaped like ``sample_x`` (``[batch, ...]``)."""
    return self.module.init(key, jnp.asarray(sample_x))["params"]

  def apply(self, params: Params, x) -> jax.Array:
    """Logits ``[batch, ..., num_classes]``."""
    if self.conv == "im2col":
      return apply_im2col(self.module, {"params": params}, x)
    return self.module.apply({"params": params}, x)

  @staticmethod
  def layer_groups(params: Params) -> tuple[str, ...]:
    """Top-level parameter subtrees, input to output (the order Flax created them in)."""
    return tuple(params.keys())


_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "mlp": lambda n: MLP(n),
    "fedavg_cnn": lambda n: FedAvgCNN(n),
    "femnist_cnn": lambda n: FedAvgCNN(n, features=(16, 32), hidden=256, padding="VALID"),
    "small_cnn": lambda n: FedAvgCNN(n, features=(8, 16), hidden=64),
    "cifar_cnn": CifarCNN,
    "resnet20": ResNet20,
    "vgg": lambda n: VGG(n),
    "vgg16": lambda n: VGG(n, layout=VGG16_LAYOUT, classifier=(4096, 4096)),
    "char_lstm": CharLSTM,
    "transformer_lm": TransformerLM,
}
_SEQUENCE_MODELS = ("char_lstm", "transformer_lm")
MODEL_NAMES = tuple(_BUILDERS)
CONV_IMPLEMENTATIONS = ("xla", "im2col")


def build_model(name: str, num_classes: int, conv: str = "xla") -> Model:
  """The named model with ``num_classes`` outputs (the vocabulary size for sequence models)."""
  if name not in _BUILDERS:
    raise ValueError(f"model.name={name!r} is unknown; allowed: {', '.join(MODEL_NAMES)}")
  if conv not in CONV_IMPLEMENTATIONS:
    raise ValueError(f"model.conv={conv!r} is unknown; allowed: "
                     f"{', '.join(CONV_IMPLEMENTATIONS)}")
  has_conv = name not in ("mlp",) + _SEQUENCE_MODELS
  return Model(name, _BUILDERS[name](num_classes), has_conv, conv)


def is_sequence_model(name: str) -> bool:
  return name in _SEQUENCE_MODELS
