"""Secure aggregation, simulated (Bonawitz et al. 2017, pairwise masking with dropout recovery).

Each client i encodes its value in fixed point, ``q_i = round(v_i * 2^scale_bits)`` as an integer
modulo 2^32, and sends ``y_i = q_i + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)`` (mod 2^32),
where ``s_ij = s_ji`` is the seed clients i and j agreed on (here: derived from the round key and
the pair, standing in for a Diffie-Hellman agreement). Summed over every client the pairwise
masks cancel exactly, so the server learns ``sum_i q_i`` and nothing else. When clients drop
after masking, the survivors' sum still holds the masks they shared with the dropped; the
server removes them with the dropped clients' pair seeds, which survivors reveal (secret-shared
in the protocol). The arithmetic is exact in uint32; decoding reads the sum as a signed integer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KEY_BYTES = 32  # one public key per client (key agreement)
SHARE_BYTES = 2 * 32  # one secret share of a seed per other client, encrypted


def encode(values: jax.Array, scale_bits: int) -> jax.Array:
  """Fixed point modulo 2^32: ``round(values * 2^scale_bits)`` as uint32 (two's complement)."""
  scaled = jnp.round(values.astype(jnp.float32) * (2.0**scale_bits)).astype(jnp.int32)
  return jax.lax.bitcast_convert_type(scaled, jnp.uint32)


def decode(total: jax.Array, scale_bits: int) -> jax.Array:
  """The inverse of ``encode`` applied to a sum (read as signed int32)."""
  return jax.lax.bitcast_convert_type(total, jnp.int32).astype(jnp.float32) / 2.0**scale_bits


def _held_mask(key: jax.Array, i, j, size: int) -> jax.Array:
  """What client i adds for its pair with j: ``+PRG(s_ij)`` if ``j > i``, ``-PRG(s_ij)`` if
  ``j < i`` (uint32 words; ``s_ij`` the same for both clients)."""
  seed = jax.random.fold_in(jax.random.fold_in(key, jnp.minimum(i, j)), jnp.maximum(i, j))
  pair = jax.random.bits(seed, (size,), jnp.uint32)
  return jnp.where(j > i, pair, jnp.uint32(0) - pair)


def masks(key: jax.Array, count: int, size: int) -> jax.Array:
  """``[count, size]``: client i's total mask ``sum_{j>i} PRG(s_ij) - sum_{j<i} PRG(s_ij)``
  (mod 2^32). The rows sum to 0 mod 2^32."""

  def client_mask(i):
    def add(j, total):
      return total + jnp.where(j == i, jnp.uint32(0), _held_mask(key, i, j, size))

    return jax.lax.fori_loop(0, count, add, jnp.zeros(size, jnp.uint32))

  return jax.vmap(client_mask)(jnp.arange(count))


def masked_inputs(values: jax.Array, key: jax.Array, scale_bits: int) -> jax.Array:
  """What each client sends, ``[count, size]`` uint32: its encoded row plus its mask."""
  count, size = values.shape
  return encode(values, scale_bits) + masks(key, count, size)


def unmask_sum(received: jax.Array, survived: jax.Array, key: jax.Array) -> jax.Array:
  """The server's sum of the survivors' encoded values (uint32 ``[size]``), from their masked
  inputs ``received [count, size]`` (rows of dropped clients are ignored) and ``survived
  [count]``: the survivors' masks shared with dropped clients are removed with those pairs'
  seeds; the masks among survivors cancel."""
  count, size = received.shape
  total = jnp.sum(jnp.where(survived[:, None], received, jnp.uint32(0)), axis=0, dtype=jnp.uint32)

  def remove(pair_index, total):
    i, j = pair_index // count, pair_index % count
    applies = survived[i] & ~survived[j]
    return total - jnp.where(applies, _held_mask(key, i, j, size), jnp.uint32(0))

  return jax.lax.fori_loop(0, count * count, remove, total)


def overhead_bytes(count: int) -> int:
  """Extra bytes one client uploads per round for the protocol with ``count`` clients: its
  public key and an encrypted share of its seed for each other client (the masked vector has
  the model's size: uint32 words for float32 values)."""
  return KEY_BYTES + (count - 1) * SHARE_BYTES
