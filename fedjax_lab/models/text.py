"""Classifiers of token sequences (a tweet's word ids, ``data/leaf.py``'s Sent140)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from fedjax_lab.checks import one_of, require

PAD, OUT_OF_VOCABULARY = 0, 1  # token ids, as data/leaf.py assigns them


class _WordWeights(nn.Module):
  """``sum over tokens of W[token] + b`` (padding left out): the one layer, ``head``."""

  num_classes: int
  vocab_size: int
  pooling: str

  @nn.compact
  def __call__(self, tokens):
    weights = nn.Embed(self.vocab_size, self.num_classes, name="words")(tokens)
    present = tokens != PAD
    pooled = jnp.where(present[..., None], weights, 0.0).sum(axis=-2)
    if self.pooling == "mean":
      pooled = pooled / jnp.maximum(present.sum(axis=-1, keepdims=True), 1)
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    return pooled + bias


class BagOfWords(nn.Module):
  """Logistic regression over a bag of words: ``logits = sum over a sequence's tokens of
  W[token] + b`` (``pooling="sum"``: the counts of each token times a ``[vocab_size,
  classes]`` matrix, LEAF's Sent140 baseline) or that sum over the number of tokens
  (``"mean"``: the word frequencies, TFF's StackOverflow tag-prediction features); padding
  (id 0) adds nothing and is not counted, an id beyond ``vocab_size`` counts as out of
  vocabulary (id 1). One layer group, ``head``."""

  num_classes: int
  vocab_size: int = 10002
  pooling: str = "sum"

  @nn.compact
  def __call__(self, x):
    tokens = jnp.where(x < self.vocab_size, x, OUT_OF_VOCABULARY)
    return _WordWeights(self.num_classes, self.vocab_size, self.pooling, name="head")(tokens)


@dataclasses.dataclass(frozen=True)
class BagOfWordsOptions:
  """``model.bag_of_words``: ``vocab_size``, token ids the model has weights for (LEAF
  Sent140's default vocabulary of 10,000 words plus padding and out-of-vocabulary);
  ``pooling``: ``sum`` (word counts) or ``mean`` (word frequencies)."""

  vocab_size: int = 10002
  pooling: str = "sum"

  def __post_init__(self):
    require(self.vocab_size >= 2, "model.bag_of_words.vocab_size", ">= 2", self.vocab_size)
    one_of("model.bag_of_words.pooling", self.pooling, ("sum", "mean"))
