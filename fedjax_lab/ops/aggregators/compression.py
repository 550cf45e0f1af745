"""Update compression, as client transforms of the aggregation ``chain``: what a client sends is
its update ``u = c - reference`` encoded in fewer bytes, and the server sees the decoded
``reference + Q(u)``. Per leaf ``u`` of ``n`` float32 values:

- ``qsgd(bits)``: stochastic uniform quantization (Alistarh et al. 2017) with ``s = 2^bits - 1``
  levels: ``Q(u)_i = ||u|| sign(u_i) xi_i / s``, ``xi_i`` = ``floor(l_i)`` or ``floor(l_i) + 1``
  with probability ``l_i - floor(l_i)``, ``l_i = s |u_i| / ||u||``; unbiased, ``E Q(u) = u``.
  Sends the norm (4 bytes) and ``n (bits + 1)`` bits (level and sign).
- ``top_k(fraction)``: the ``k = ceil(fraction n)`` entries of largest magnitude, the rest 0
  (biased; without error feedback). Sends ``k`` values and ``k`` int32 indices: ``8 k`` bytes.
- ``random_k(fraction)``: ``k`` entries drawn uniformly without replacement, scaled by
  ``n / k`` (unbiased). Sends ``k`` values and the 8-byte seed that regenerates the indices.

``error_feedback(aggregator, compressor, num_clients)`` (Seide et al. 2014; Karimireddy et al.
2019, "Error Feedback Fixes SignSGD"): client ``k`` keeps the residual ``e_k`` (starting at 0)
of what its compression left out and sends ``Q(u + e_k)`` instead of ``Q(u)``, then keeps
``e_k <- u + e_k - Q(u + e_k)``; over rounds, what it sent plus its residual is what it meant to
send (``sum_t Q_t + e_T = sum_t u_t``). A client with no examples (padding, lost to the system)
sends nothing and keeps its residual.

``encoded_bytes(shape_tree)``: the bytes one client's upload of that shape costs, counted
exactly as above (the runner's ``bytes_up`` and the simulated clock use it).
``keeps_clipping``: whether ``||Q(u)|| <= ||u||`` always holds (top-k), so a clipped update
stays clipped and central DP's sensitivity holds; QSGD and random-k can grow the norm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fedjax_lab.checks import require
from fedjax_lab.ops.aggregators.contract import Aggregator, ClientTransform, no_state


def _on_update(compress: Callable) -> Callable:
  """A client transform's ``apply`` that compresses each leaf of ``c - reference`` with
  ``compress(leaf, key)`` (leaf keys: ``fold_in(key, index)``)."""

  def apply(contribution, reference, state, key):
    del state
    leaves, treedef = jax.tree.flatten(contribution)
    references = jax.tree.leaves(reference)
    out = [
      r + compress((c - r).astype(jnp.float32), jax.random.fold_in(key, i)).astype(c.dtype)
      for i, (c, r) in enumerate(zip(leaves, references))
    ]
    return jax.tree.unflatten(treedef, out)

  return apply


def qsgd(bits: int) -> ClientTransform:
  """Stochastic uniform quantization to ``bits`` bits a value (module docstring)."""
  levels = 2**bits - 1

  def compress(update, key):
    norm = jnp.linalg.norm(update.ravel())
    scaled = levels * jnp.abs(update) / jnp.where(norm > 0, norm, 1.0)  # u = 0: all zeros
    lower = jnp.floor(scaled)
    level = lower + (jax.random.uniform(key, update.shape) < scaled - lower)
    return jnp.sign(update) * norm * level / levels

  return ClientTransform(no_state, _on_update(compress))


def _kept(size: int, fraction: float) -> int:
  return min(size, max(1, math.ceil(fraction * size)))


def top_k(fraction: float) -> ClientTransform:
  """The largest-magnitude ``fraction`` of each leaf (module docstring)."""

  def compress(update, key):
    del key
    flat = update.ravel()
    _, indices = jax.lax.top_k(jnp.abs(flat), _kept(flat.size, fraction))
    return jnp.zeros_like(flat).at[indices].set(flat[indices]).reshape(update.shape)

  return ClientTransform(no_state, _on_update(compress))


def random_k(fraction: float) -> ClientTransform:
  """A uniformly random ``fraction`` of each leaf, scaled to stay unbiased (module docstring)."""

  def compress(update, key):
    flat = update.ravel()
    k = _kept(flat.size, fraction)
    indices = jax.random.choice(key, flat.size, (k,), replace=False)
    kept = jnp.zeros_like(flat).at[indices].set(flat[indices] * (flat.size / k))
    return kept.reshape(update.shape)

  return ClientTransform(no_state, _on_update(compress))


def error_feedback(aggregator: Aggregator, compressor: ClientTransform, num_clients: int):
  """``aggregator`` preceded by ``compressor`` with error feedback (module docstring).

  Args:
    aggregator: the rest of the aggregation (without the compressor).
    compressor: a stateless compressing client transform (``qsgd``, ``top_k``, ``random_k``).
    num_clients: clients of the federation: one residual each.

  Returns:
    An ``Aggregator`` with ``feedback = compressor`` and the state ``(aggregator's state,
    residuals [num_clients, ...])``; ``ClientSetup.cohort_reduce`` applies the feedback (it
    knows the cohort's clients), its ``aggregate`` / ``prepare`` / ``finalize`` are the
    aggregator's on the first part of the state.
  """

  def init(template):
    residuals = jax.tree.map(lambda t: jnp.zeros((num_clients,) + t.shape, t.dtype), template)
    return aggregator.init(template), residuals

  def on_inner(function):
    if function is None:
      return None

    def apply(*args):
      *head, state, key = args
      value, inner = function(*head, state[0], key)
      return value, (inner, state[1])

    return apply

  def prepare(contribution, reference, state, key):
    return aggregator.prepare(contribution, reference, state[0], key)

  return Aggregator(
    init,
    on_inner(aggregator.aggregate),
    prepare if aggregator.prepare is not None else None,
    on_inner(aggregator.finalize),
    aggregator.upload_overhead,
    compressor,
  )


def with_feedback(compressor: ClientTransform, contribution, reference, residual, present, key):
  """``(sent, residual)`` of one client (module docstring): ``sent = reference + Q(c -
  reference + e)``, the new ``e = c - reference + e - Q(...)``; a client not ``present``
  sends ``reference`` and keeps ``e``."""
  target = jax.tree.map(jnp.add, contribution, residual)
  sent = compressor.apply(target, reference, (), key)
  kept = jax.tree.map(lambda t, s: t - s, target, sent)
  sent = jax.tree.map(lambda s, r: jnp.where(present, s, r), sent, reference)
  kept = jax.tree.map(lambda k, e: jnp.where(present, k, e), kept, residual)
  return sent, kept


def _leaf_sizes(shape_tree) -> list[int]:
  return [math.prod(leaf.shape) for leaf in jax.tree.leaves(shape_tree)]


@dataclasses.dataclass(frozen=True)
class QSGDOptions:
  """``compression.qsgd``: ``bits`` per value (plus a sign bit)."""

  bits: int = 8
  keeps_clipping = False

  def __post_init__(self):
    require(1 <= self.bits <= 16, "compression.qsgd.bits", "in [1, 16]", self.bits)

  def encoded_bytes(self, shape_tree) -> int:
    return sum(4 + math.ceil(n * (self.bits + 1) / 8) for n in _leaf_sizes(shape_tree))


@dataclasses.dataclass(frozen=True)
class _SparseOptions:
  """A sparsifier's ``fraction`` of each leaf's entries sent (``TABLE``: its config table)."""

  fraction: float = 0.01
  TABLE = ""

  def __post_init__(self):
    require(0 < self.fraction <= 1, f"{self.TABLE}.fraction", "in (0, 1]", self.fraction)


@dataclasses.dataclass(frozen=True)
class TopKOptions(_SparseOptions):
  """``compression.top_k``: the ``fraction`` of each leaf's largest entries sent (a value and
  an int32 index each)."""

  TABLE = "compression.top_k"
  keeps_clipping = True

  def encoded_bytes(self, shape_tree) -> int:
    return sum(8 * _kept(n, self.fraction) for n in _leaf_sizes(shape_tree))


@dataclasses.dataclass(frozen=True)
class RandomKOptions(_SparseOptions):
  """``compression.random_k``: a random ``fraction`` of each leaf's entries sent (the values
  and the 8-byte seed of their indices)."""

  TABLE = "compression.random_k"
  keeps_clipping = False

  def encoded_bytes(self, shape_tree) -> int:
    return sum(4 * _kept(n, self.fraction) + 8 for n in _leaf_sizes(shape_tree))


@dataclasses.dataclass(frozen=True)
class CompressorEntry:
  """A registered compressor: ``build(options) -> ClientTransform``; ``options`` its dataclass
  (the config table ``compression.<name>``), which also counts ``encoded_bytes``."""

  build: Callable[[Any], ClientTransform]
  options: type
