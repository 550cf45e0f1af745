"""Classifiers of token sequences (a tweet's word ids, ``data/leaf.py``'s Sent140)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from fedjax_lab.checks import require

PAD, OUT_OF_VOCABULARY = 0, 1  # token ids, as data/leaf.py assigns them


class _WordWeights(nn.Module):
  """``sum over tokens of W[token] + b`` (padding left out): the one layer, ``head``."""

  num_classes: int
  vocab_size: int

  @nn.compact
  def __call__(self, tokens):
    weights = nn.Embed(self.vocab_size, self.num_classes, name="words")(tokens)
    weights = jnp.where((tokens != PAD)[..., None], weights, 0.0)
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    return weights.sum(axis=-2) + bias


class BagOfWords(nn.Module):
  """Logistic regression over a bag of words (LEAF's Sent140 baseline): ``logits = sum over
  a sequence's tokens of W[token] + b``, the counts of each token times a ``[vocab_size,
  classes]`` matrix; padding (id 0) adds nothing, an id beyond ``vocab_size`` counts as out of
  vocabulary (id 1). One layer group, ``head``."""

  num_classes: int
  vocab_size: int = 10002

  @nn.compact
  def __call__(self, x):
    tokens = jnp.where(x < self.vocab_size, x, OUT_OF_VOCABULARY)
    return _WordWeights(self.num_classes, self.vocab_size, name="head")(tokens)


@dataclasses.dataclass(frozen=True)
class BagOfWordsOptions:
  """``model.bag_of_words``: ``vocab_size``, token ids the model has weights for (LEAF
  Sent140's default vocabulary of 10,000 words plus padding and out-of-vocabulary)."""

  vocab_size: int = 10002

  def __post_init__(self):
    require(self.vocab_size >= 2, "model.bag_of_words.vocab_size", ">= 2", self.vocab_size)
