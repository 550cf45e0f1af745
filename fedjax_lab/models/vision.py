"""Image classifiers used by the FL papers. Inputs ``[batch, H, W, C]`` in [0, 1], logits out.

Normalization layers are GroupNorm, not BatchNorm: batch statistics are mutable state that
would make local training impure and cohort-size dependent (Hsieh et al. 2020 show BatchNorm
also hurts under non-IID data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn

from fedjax_lab.checks import one_of, require
from fedjax_lab.models.pooling import max_pool_2x2


class MLP(nn.Module):
  """Flatten, then ``hidden`` ReLU layers (each normalized first by a LayerNorm ``norm<i>``
  with ``normalization="layer"``), then a linear read-out."""

  num_classes: int
  hidden: Sequence[int] = (200, 200)
  normalization: str = "none"

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, name=f"dense{i}")(x)
      if self.normalization == "layer":
        x = nn.LayerNorm(name=f"norm{i}")(x)
      x = nn.relu(x)
    return nn.Dense(self.num_classes, name="head")(x)


@dataclasses.dataclass(frozen=True)
class MLPOptions:
  """``model.mlp``: the widths of the hidden ReLU layers (none: a linear model), and
  ``normalization``: ``none`` or ``layer`` (a LayerNorm before each ReLU; FedBN keeps them
  local)."""

  hidden: tuple[int, ...] = (200, 200)
  normalization: str = "none"

  def __post_init__(self):
    require(all(w >= 1 for w in self.hidden), "model.mlp.hidden", "widths >= 1", self.hidden)
    one_of("model.mlp.normalization", self.normalization, ("none", "layer"))


class FedAvgCNN(nn.Module):
  """McMahan et al. 2017's CNN for 28x28 inputs: conv5x5(32)-pool-conv5x5(64)-pool-fc512-out.

  With ``features=(16, 32)`` and ``hidden=256``, 'VALID' padding it is FedMR's FEMNIST
  ``CNNFashionMnist`` (fc 512 -> 256).
  """

  num_classes: int
  features: Sequence[int] = (32, 64)
  hidden: int = 512
  padding: str = "SAME"

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.features):
      x = max_pool_2x2(nn.relu(nn.Conv(width, (5, 5), padding=self.padding, name=f"conv{i}")(x)))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, name="fc")(x))
    return nn.Dense(self.num_classes, name="head")(x)


class CifarCNN(nn.Module):
  """FedMR's ``CNNCifar`` (LeNet-5): conv5x5(6)-pool-conv5x5(16)-pool-fc120-fc84-out."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = max_pool_2x2(nn.relu(nn.Conv(6, (5, 5), padding="VALID", name="conv0")(x)))
    x = max_pool_2x2(nn.relu(nn.Conv(16, (5, 5), padding="VALID", name="conv1")(x)))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(120, name="fc0")(x))
    x = nn.relu(nn.Dense(84, name="fc1")(x))
    return nn.Dense(self.num_classes, name="head")(x)


class EmnistCNN(nn.Module):
  """Reddi et al. 2021's EMNIST character CNN (TFF's ``create_conv_dropout_model``, FedJAX's
  ``EMNIST_CONV``): conv3x3(32)-ReLU, conv3x3(64)-ReLU ('VALID'), max-pool 2x2, fc128-ReLU,
  read-out; 1.21M parameters for 62 classes. Their two dropout layers (0.25, 0.5) are left
  out: local training here draws no dropout masks."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(32, (3, 3), padding="VALID", name="conv0")(x))
    x = max_pool_2x2(nn.relu(nn.Conv(64, (3, 3), padding="VALID", name="conv1")(x)))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128, name="fc")(x))
    return nn.Dense(self.num_classes, name="head")(x)


def _norm(name: str, channels: int) -> nn.Module:
  return nn.GroupNorm(num_groups=min(8, channels), name=name)


class PreActBottleneck(nn.Module):
  """GN-ReLU-conv1x1, GN-ReLU-conv3x3(stride), GN-ReLU-conv1x1(4x); conv1x1 projection shortcut."""

  planes: int
  stride: int

  @nn.compact
  def __call__(self, x):
    out_channels = 4 * self.planes
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_channels:
      shortcut = nn.Conv(
        out_channels, (1, 1), strides=self.stride, use_bias=False, name="shortcut"
      )(x)
    y = nn.Conv(self.planes, (1, 1), use_bias=False, name="conv0")(
      nn.relu(_norm("norm0", x.shape[-1])(x))
    )
    y = nn.Conv(self.planes, (3, 3), strides=self.stride, padding=1, use_bias=False, name="conv1")(
      nn.relu(_norm("norm1", self.planes)(y))
    )
    y = nn.Conv(out_channels, (1, 1), use_bias=False, name="conv2")(
      nn.relu(_norm("norm2", self.planes)(y))
    )
    return y + shortcut


class ResNet20(nn.Module):
  """FedMR's ``ResNet20_cifar``: stem conv3x3(16), 3 stages x 2 pre-activation bottlenecks
  (planes 16/32/64, strides 1/2/2, expansion 4), global average pool, fc 256 -> classes.
  GroupNorm replaces the code's BatchNorm."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(16, (3, 3), padding=1, use_bias=False, name="stem")(x)
    for stage, (planes, stride) in enumerate(zip((16, 32, 64), (1, 2, 2))):
      for block in range(2):
        x = PreActBottleneck(
          planes, stride if block == 0 else 1, name=f"stage{stage}_block{block}"
        )(x)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


class ConvNormReLU(nn.Module):
  """3x3 conv, GroupNorm, ReLU: one VGG layer (its norm moves with it as one layer group)."""

  features: int

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), padding=1, name="conv")(x)
    return nn.relu(_norm("norm", self.features)(x))


VGG16_LAYOUT = (
  64,
  64,
  "M",
  128,
  128,
  "M",
  256,
  256,
  256,
  "M",
  512,
  512,
  512,
  "M",
  512,
  512,
  512,
  "M",
)


class VGG(nn.Module):
  """VGG-style net: 3x3 conv-GN-ReLU stacks and 2x2 max-pools per ``layout``, then an MLP
  classifier. ``VGG16_LAYOUT`` with ``classifier=(4096, 4096)`` is VGG-16."""

  num_classes: int
  layout: Sequence = (32, "M", 64, "M", 128, "M")
  classifier: Sequence[int] = (256,)

  @nn.compact
  def __call__(self, x):
    conv_index = 0
    for item in self.layout:
      if item == "M":
        x = max_pool_2x2(x)
      else:
        x = ConvNormReLU(item, name=f"conv{conv_index}")(x)
        conv_index += 1
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.classifier):
      x = nn.relu(nn.Dense(width, name=f"fc{i}")(x))
    return nn.Dense(self.num_classes, name="head")(x)


class BasicBlock(nn.Module):
  """ResNet's basic block: conv3x3(stride)-GN-ReLU, conv3x3-GN, plus the input (a conv1x1-GN
  projection where the shape changes), ReLU. GroupNorm with ``groups`` groups."""

  features: int
  stride: int
  groups: int

  @nn.compact
  def __call__(self, x):
    norm = lambda name: nn.GroupNorm(num_groups=self.groups, name=name)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = nn.Conv(
        self.features, (1, 1), strides=self.stride, use_bias=False, name="shortcut"
      )(x)
      shortcut = norm("shortcut_norm")(shortcut)
    y = nn.Conv(
      self.features, (3, 3), strides=self.stride, padding=1, use_bias=False, name="conv0"
    )(x)
    y = nn.relu(norm("norm0")(y))
    y = norm("norm1")(nn.Conv(self.features, (3, 3), padding=1, use_bias=False, name="conv1")(y))
    return nn.relu(y + shortcut)


class ResNetStem(nn.Module):
  """conv7x7(64, stride 2)-GN-ReLU, max-pool 3x3 of stride 2: one layer group."""

  groups: int

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(64, (7, 7), strides=2, padding=3, use_bias=False, name="conv")(x)
    x = nn.relu(nn.GroupNorm(num_groups=self.groups, name="norm")(x))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNet18(nn.Module):
  """ResNet-18 with GroupNorm (2 groups), the CIFAR-100 model of Reddi et al. 2021 (TFF's
  ``create_resnet18`` on 24x24 crops): stem conv7x7(64, stride 2)-GN-ReLU and a 3x3 max-pool
  of stride 2, four stages of two basic blocks (64/128/256/512 channels, strides 1/2/2/2),
  global average pool, read-out; 11.2M parameters for 100 classes."""

  num_classes: int
  groups: int = 2

  @nn.compact
  def __call__(self, x):
    x = ResNetStem(self.groups, name="stem")(x)
    for stage, features in enumerate((64, 128, 256, 512)):
      for block in range(2):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(features, stride, self.groups, name=f"stage{stage}_block{block}")(x)
    return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))
