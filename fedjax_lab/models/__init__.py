"""Model registry (``MODELS``). The engine sees a model only through ``Model``: ``init``,
``apply`` and the ordered ``layer_groups`` that layer-wise methods recombine, personalize or
prune."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_lab.models.im2col import CONVOLUTIONS, apply_convolutions
from fedjax_lab.models.initialization import torch_default_init
from fedjax_lab.models.sequence import CharLSTM, TransformerLM, WordLSTM
from fedjax_lab.models.text import BagOfWords, BagOfWordsOptions
from fedjax_lab.models.vision import (
  MLP,
  VGG,
  VGG16_LAYOUT,
  CifarCNN,
  EmnistCNN,
  FedAvgCNN,
  MLPOptions,
  ResNet18,
  ResNet20,
)
from fedjax_lab.registry import NoOptions, Registry

Params = dict


@dataclasses.dataclass(frozen=True)
class Model:
  """A Flax module seen as pure functions. ``params`` is the module's ``'params'`` collection.
  ``conv``: how convolutions are computed, ``xla`` (``lax.conv``), ``im2col`` (matrix
  products) or ``explicit_vjp`` (XLA's forward, a backward pass fast inside rolled loops on
  XLA:CPU); models/im2col.py. The parameters are the same either way. ``initialization``:
  ``flax`` (the modules' own initializers) or ``torch`` (PyTorch's defaults for linear and
  convolutional layers; models/initialization.py)."""

  name: str
  module: nn.Module
  has_conv: bool
  conv: str = "xla"
  initialization: str = "flax"

  def init(self, key: jax.Array, sample_x) -> Params:
    """Parameters for inputs shaped like ``sample_x`` (``[batch, ...]``)."""
    params = self.module.init(key, jnp.asarray(sample_x))["params"]
    if self.initialization == "torch":
      params = torch_default_init(params, jax.random.fold_in(key, 1))
    return params

  def apply(self, params: Params, x) -> jax.Array:
    """Logits ``[batch, ..., num_classes]``."""
    if self.conv != "xla":
      return apply_convolutions(self.module, {"params": params}, x, self.conv)
    return self.module.apply({"params": params}, x)

  def apply_with_features(self, params: Params, x) -> tuple[jax.Array, jax.Array]:
    """``(logits, features)``: ``apply``'s logits and the representation the read-out layer
    ``head`` receives (``[batch, ..., d]``; contrastive methods such as MOON compare it)."""
    captured = []

    def capture(features):
      captured.append(features)
      return features

    return self._apply_transforming_head_input(params, x, capture), captured[-1]

  def apply_with_dropout(self, params: Params, x, key: jax.Array, rate: float) -> jax.Array:
    """Logits with inverted dropout on the read-out layer's input: each feature ``head``
    receives is zeroed with probability ``rate`` (masks drawn from ``key``) and the others
    scaled by ``1 / (1 - rate)``, so that the expected logits are ``apply``'s (``head`` is
    linear). The parameters are ``apply``'s; ``rate = 0`` is ``apply``."""
    if rate == 0:
      return self.apply(params, x)

    def drop(features):
      keep = jax.random.bernoulli(key, 1.0 - rate, features.shape)
      return jnp.where(keep, features / (1.0 - rate), 0).astype(features.dtype)

    return self._apply_transforming_head_input(params, x, drop)

  def _apply_transforming_head_input(self, params: Params, x, transform) -> jax.Array:
    """``apply`` with the input ``h`` of the layer named ``head`` replaced by ``transform(h)``."""
    found = []

    def intercept(next_fun, args, kwargs, context):
      if context.module.name == "head" and context.method_name == "__call__":
        found.append(True)
        args = (transform(args[0]),) + tuple(args[1:])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(intercept):
      logits = self.apply(params, x)
    if not found:
      raise ValueError(f"model {self.name!r} has no layer named 'head' to take features from")
    return logits

  def layer_groups(self, sample_x) -> tuple[str, ...]:
    """The top-level parameter subtrees, input to output: the order in which the forward pass
    on inputs shaped like ``sample_x`` first calls each top-level submodule (traced
    abstractly, nothing computed). A parameters dict's key order is no guide: ``jax.eval_shape``
    and tree maps sort the keys (ResNet-20's ``head`` before ``stem``). Top-level modules
    without parameters (``nn.RNN``'s wrapper) are skipped; a subtree no call reached comes
    last, sorted."""
    called = []

    def record(next_fun, args, kwargs, context):
      path = context.module.scope.path if context.module.scope is not None else ()
      if len(path) == 1 and path[0] not in called:
        called.append(path[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      shapes = jax.eval_shape(self.init, jax.random.key(0), jnp.asarray(sample_x))
    ordered = [name for name in called if name in shapes]  # modules with parameters
    return tuple(ordered) + tuple(sorted(name for name in shapes if name not in ordered))


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A registered model: ``module(num_classes, **fields of options) -> nn.Module``;
  ``has_conv`` tells the engine it holds convolutions (execution defaults on CPU differ);
  ``reads_tokens``: its inputs are integer token ids (sequence models), checked against the
  data before anything compiles; ``options``: the dataclass of its settings (``model.<name>``
  in a config)."""

  module: Callable[..., nn.Module]
  has_conv: bool
  reads_tokens: bool = False
  options: type = NoOptions


MODELS: Registry[ModelEntry] = Registry("model.name")
MODELS.register("mlp", ModelEntry(MLP, has_conv=False, options=MLPOptions))
MODELS.register("fedavg_cnn", ModelEntry(FedAvgCNN, has_conv=True))
MODELS.register(
  "femnist_cnn",
  ModelEntry(lambda n: FedAvgCNN(n, features=(16, 32), hidden=256, padding="VALID"), has_conv=True),
)
MODELS.register(
  "small_cnn", ModelEntry(lambda n: FedAvgCNN(n, features=(8, 16), hidden=64), has_conv=True)
)
MODELS.register("cifar_cnn", ModelEntry(CifarCNN, has_conv=True))
MODELS.register("emnist_cnn", ModelEntry(EmnistCNN, has_conv=True))
MODELS.register("resnet20", ModelEntry(ResNet20, has_conv=True))
MODELS.register("resnet18_gn", ModelEntry(ResNet18, has_conv=True))
MODELS.register("vgg", ModelEntry(VGG, has_conv=True))
MODELS.register(
  "vgg16", ModelEntry(lambda n: VGG(n, layout=VGG16_LAYOUT, classifier=(4096, 4096)), has_conv=True)
)
MODELS.register("char_lstm", ModelEntry(CharLSTM, has_conv=False, reads_tokens=True))
MODELS.register("word_lstm", ModelEntry(WordLSTM, has_conv=False, reads_tokens=True))
MODELS.register(
  "bag_of_words",
  ModelEntry(BagOfWords, has_conv=False, reads_tokens=True, options=BagOfWordsOptions),
)
MODELS.register("transformer_lm", ModelEntry(TransformerLM, has_conv=False, reads_tokens=True))
MODELS.register(  # WorldLM's paper scale, byte vocabulary: 86M and 384M parameters
  "transformer_lm_125m",
  ModelEntry(
    lambda n: TransformerLM(n, width=768, num_layers=12, num_heads=12, max_length=512),
    has_conv=False,
    reads_tokens=True,
  ),
)
MODELS.register(
  "transformer_lm_400m",
  ModelEntry(
    lambda n: TransformerLM(n, width=1152, num_layers=24, num_heads=18, max_length=512),
    has_conv=False,
    reads_tokens=True,
  ),
)
MODELS.register(
  "byte_lm",  # the CPU-scale WorldLM model: 46k parameters, byte windows up to 128
  ModelEntry(
    lambda n: TransformerLM(n, width=32, num_heads=2, max_length=128),
    has_conv=False,
    reads_tokens=True,
  ),
)
CONV_IMPLEMENTATIONS = ("xla",) + tuple(CONVOLUTIONS)
INITIALIZATIONS = ("flax", "torch")


def build_model(
  name: str, num_classes: int, conv: str = "xla", initialization: str = "flax", options=None
) -> Model:
  """The registered model ``name`` with ``num_classes`` outputs (the vocabulary size for
  sequence models); ``conv`` and ``initialization`` as in ``Model``; ``options``: an instance
  of the entry's options dataclass (None: its defaults)."""
  entry = MODELS.get(name)
  if conv not in CONV_IMPLEMENTATIONS:
    raise ValueError(f"model.conv must be one of {', '.join(CONV_IMPLEMENTATIONS)}, got {conv!r}")
  settings = dataclasses.asdict(options if options is not None else entry.options())
  return Model(name, entry.module(num_classes, **settings), entry.has_conv, conv, initialization)
