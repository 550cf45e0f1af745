"""Next-token models. Inputs ``[batch, time]`` int ids, logits ``[batch, time, vocab]``."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class CharLSTM(nn.Module):
  """LEAF's Shakespeare model: embedding(8), two LSTM(256) layers, a dense read-out per step."""

  vocab_size: int
  embed_dim: int = 8
  hidden: int = 256
  num_layers: int = 2

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
    for i in range(self.num_layers):
      x = nn.RNN(nn.OptimizedLSTMCell(self.hidden, name=f"lstm{i}"))(x)
    return nn.Dense(self.vocab_size, name="head")(x)


class WordLSTM(nn.Module):
  """The StackOverflow next-word model of Reddi et al. 2021 (TFF's
  ``create_recurrent_model``, FedJAX's ``STACKOVERFLOW_WORD``): embedding(96), one LSTM(670),
  a dense projection to 96, a dense read-out per step over the ``vocab_size`` ids (TFF's
  10,000 words plus padding, out-of-vocabulary, beginning and end: 10,004); 4.05M
  parameters."""

  vocab_size: int
  embed_dim: int = 96
  hidden: int = 670

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
    x = nn.RNN(nn.OptimizedLSTMCell(self.hidden, name="lstm"))(x)
    x = nn.Dense(self.embed_dim, name="projection")(x)
    return nn.Dense(self.vocab_size, name="head")(x)


class DecoderBlock(nn.Module):
  """Pre-LayerNorm causal self-attention and MLP, each with a residual connection."""

  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x):
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
    normed = nn.LayerNorm(name="norm0")(x)
    x = x + nn.MultiHeadDotProductAttention(self.num_heads, name="attention")(normed, mask=mask)
    y = nn.Dense(self.mlp_ratio * x.shape[-1], name="mlp_in")(nn.LayerNorm(name="norm1")(x))
    return x + nn.Dense(x.shape[-1], name="mlp_out")(nn.gelu(y))


class TransformerLM(nn.Module):
  """A small decoder-only Transformer: token + learned position embeddings, ``num_layers``
  pre-LN blocks, a final LayerNorm and an untied read-out."""

  vocab_size: int
  width: int = 64
  num_layers: int = 2
  num_heads: int = 4
  max_length: int = 256

  @nn.compact
  def __call__(self, tokens):
    positions = jnp.arange(tokens.shape[1])
    x = nn.Embed(self.vocab_size, self.width, name="embed")(tokens)
    x = x + nn.Embed(self.max_length, self.width, name="position")(positions)[None]
    for i in range(self.num_layers):
      x = DecoderBlock(self.num_heads, name=f"block{i}")(x)
    return nn.Dense(self.vocab_size, name="head")(nn.LayerNorm(name="final_norm")(x))
