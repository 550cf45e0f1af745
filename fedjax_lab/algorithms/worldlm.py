"""WorldLM: federations of federations with a shared backbone and attentively aggregated key
layers (Iacob et al., arXiv 2405.14446), and the baselines that share its round.

The federation is a tree (``data.tree.FederationTree``, from the clients' paths): the root,
federations, sub-federations, clients at the leaves. The model's parameters are split by
``key_layers`` (comma-separated path components, e.g. ``block1`` or ``embed,position``) into
a backbone B (every parameter none of whose path components is named) and key layers K. The
state holds one B and one K per tree node (``[num_nodes, ...]``), persistent across rounds. One
round, one jitted program, every client of every federation vmapped together:

1. each client starts from B and the K of its ``start`` node (its sub-federation for
   WorldLM) and trains both locally (``local.*``; AdamW in the paper);
2. B is averaged up the tree by token counts to the root (``ops.tree_aggregation.tree_mean``;
   equal to the flat token-weighted mean);
3. K is aggregated bottom-up by attention (``tree_attention``): each internal node ``p``
   weighs its children's K (and its own, if ``include_parent``) with
   ``softmax_c(sim(K_p, K_c) / temperature)``, level by level;
4. residual layer embeddings (``residual_exchange``): each internal node's residual
   ``K_v - K_parent(v)`` is mixed with the residuals of every node at its depth, across
   federations, by ``softmax(sim / cross_temperature)``, and K is rebuilt top-down as the
   parent's K plus the mixed residual (``cross_temperature = 0``: no exchange);
5. top-down: B is the root's; each client's next start is its sub-federation's K.

Differential privacy at the federation boundary (``dp_clip_norm = C > 0``): each
federation's (depth-1 node's) token-weighted B update is clipped to ``C``, the root takes
their uniform mean plus Gaussian noise of std ``z C / F`` (``z = dp_noise_multiplier``, ``F``
federations; ``z = 0``: clipping alone, the reference without noise), and K does not cross
federation boundaries (attention stops at the federations, no residual exchange). With
``z > 0`` the (epsilon, ``dp_delta``) spent is logged every round, by RDP and PLD accounting.

``variant`` picks the method; the baselines run the same round, data, model and budget:

- ``worldlm``: the above;
- ``fedavg``: everything is B (one global model, token-weighted FedAvg);
- ``hierfavg``: everything is K, averaged by tokens inside each sub-federation every round and
  over the whole tree every ``global_every`` rounds (HierFAVG's edge and cloud periods);
- ``fedper``: B shared, K personal per client (never aggregated);
- ``federation_local``: everything is K, averaged by tokens inside each federation (depth 1);
  nothing crosses federations.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct, traverse_util

from fedjax_lab.algorithms import phases
from fedjax_lab.algorithms.base import (
  AGGREGATION_STREAM,
  Algorithm,
  AlgorithmEntry,
  ClientSetup,
)
from fedjax_lab.checks import one_of, require, typed_fields
from fedjax_lab.data.tree import FederationTree
from fedjax_lab.ops import accounting
from fedjax_lab.ops.aggregate import tree_broadcast, tree_gather, weighted_mean
from fedjax_lab.ops.tree_aggregation import (
  SIMILARITIES,
  residual_exchange,
  tree_attention,
  tree_mean,
)

VARIANTS = ("worldlm", "fedavg", "hierfavg", "fedper", "federation_local")
ALL = object()  # key_layers: every parameter is a key layer
PLD_UP_TO = 100.0  # the PLD epsilon is logged while the RDP epsilon is at most this


@struct.dataclass
class WorldState:
  backbone: dict  # B, flat {path: array}
  keys: dict  # K per node, flat {path: [num_nodes, ...]}
  round: jax.Array  # rounds completed
  attention: jax.Array  # [num_nodes] weight each node got from its parent's softmax, last round
  exchange: jax.Array  # [num_nodes, num_nodes] residual exchange weights, last round


def split_params(params: dict, key_layers) -> tuple[dict, dict]:
  """``(backbone, key)`` as flat ``{"a/b/kernel": leaf}`` dicts: a parameter is a key layer
  when a component of its path is in ``key_layers`` (a collection of names, or ``ALL``)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  is_key = {
    path: key_layers is ALL or bool(set(path.split("/")) & set(key_layers)) for path in flat
  }
  return (
    {path: leaf for path, leaf in flat.items() if not is_key[path]},
    {path: leaf for path, leaf in flat.items() if is_key[path]},
  )


def merge_params(backbone: dict, key: dict) -> dict:
  """The nested parameters of ``split_params``'s two halves."""
  return traverse_util.unflatten_dict({**backbone, **key}, sep="/")


def start_nodes(tree: FederationTree, variant: str) -> np.ndarray:
  """``[num_clients]``: the node whose K each client starts from (and is evaluated with)."""
  if variant == "fedper":
    return tree.client_node
  if variant == "federation_local":
    return tree.ancestor_at_depth(1)
  return tree.parent_of[tree.client_node]


def _clip(update: dict, clip_norm: float) -> dict:
  """``update * min(1, C / |update|)``, the norm over every leaf."""
  norm = optax.tree.norm(update)
  scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny))
  return jax.tree.map(lambda leaf: leaf * scale, update)


def private_backbone(
  backbone, per_federation, weight, federations, clip_norm, noise_multiplier, key
):
  """DP at the federation boundary: ``backbone + mean_f clip(B_f - backbone) + N(0, (z C /
  F)^2)`` over the ``F = len(federations)`` federations (``per_federation``: every node's
  aggregate, read at ``federations``; ``weight``: theirs, a federation without clients this
  round counts as no update). Each federation's update is clipped to ``clip_norm`` ``C``;
  ``z``: ``noise_multiplier``; ``key``: the round's."""
  present = weight[federations] > 0
  updates = [
    _clip(jax.tree.map(lambda f, b: f[node] - b, per_federation, backbone), clip_norm)
    for node in federations
  ]
  count = jnp.maximum(present.sum(), 1)
  mean_update = jax.tree.map(
    lambda *leaves: sum(jnp.where(p, u, 0.0) for p, u in zip(present, leaves)) / count, *updates
  )
  leaves, treedef = jax.tree.flatten(mean_update)
  noise_keys = jax.random.split(jax.random.fold_in(key, AGGREGATION_STREAM), len(leaves))
  stddev = noise_multiplier * clip_norm / len(federations)
  noisy = [
    leaf + stddev * jax.random.normal(k, leaf.shape, leaf.dtype)
    for leaf, k in zip(leaves, noise_keys)
  ]
  return jax.tree.map(jnp.add, backbone, jax.tree.unflatten(treedef, noisy))


def boundary_privacy(federations: int, noise_multiplier: float, delta: float, rounds: int) -> dict:
  """The federation-boundary DP's epsilon after ``rounds`` (every federation every round): RDP's,
  and PLD's while RDP's is at most ``PLD_UP_TO`` (the PLD's discretized support grows like
  ``1 / z^2``: at z = 0.02 one round took minutes and gigabytes, for an epsilon in the
  thousands that no one would use)."""
  spent = accounting.epsilon(rounds, federations, federations, noise_multiplier, delta)
  if spent > PLD_UP_TO:
    return {"privacy_epsilon": spent}
  pld = accounting.epsilon(rounds, federations, federations, noise_multiplier, delta, "pld")
  return {"privacy_epsilon": spent, "privacy_epsilon_pld": pld}


def key_aggregator(
  tree: FederationTree,
  variant: str,
  *,
  similarity: str,
  temperature: float,
  include_parent: bool,
  cross_temperature: float,
  global_every: int,
  dp: bool,
):
  """How ``variant`` aggregates the key layers up ``tree`` (``worldlm``'s arguments of the same
  names): ``aggregate(state, node_keys, node_weight) -> (node_keys, attention, exchange)``.
  ``worldlm``: attention over children (up to the federations under ``dp``), then the
  residual exchange between siblings; ``hierfavg``: weighted means up the tree, copied down
  from the root every ``global_every`` rounds; ``federation_local``: means up to the
  federations; the others keep the nodes' keys as trained."""
  parent_of, depth = tree.parent_of, tree.depth
  internal = np.zeros(tree.num_nodes, bool)
  internal[tree.internal_nodes] = True

  def aggregate_keys(state, node_keys, node_weight):
    attention, exchange = state.attention, state.exchange
    if variant == "worldlm":
      node_keys, attention = tree_attention(
        node_keys,
        node_weight,
        parent_of,
        depth,
        similarity=similarity,
        temperature=temperature,
        include_parent=include_parent,
        up_to=1 if dp else 0,
      )
      if cross_temperature > 0 and not dp:
        node_keys, exchange = residual_exchange(
          node_keys,
          parent_of,
          depth,
          internal & (depth >= 1),
          similarity=similarity,
          temperature=cross_temperature,
        )
    elif variant == "hierfavg":
      node_keys, _ = tree_mean(node_keys, node_weight, parent_of, depth)
      cloud = (state.round + 1) % global_every == 0
      rows = jnp.asarray(internal)[:, None] & cloud
      node_keys = jax.tree.map(
        lambda leaf: jnp.where(rows.reshape((-1,) + (1,) * (leaf.ndim - 1)), leaf[0], leaf),
        node_keys,
      )
    elif variant == "federation_local":
      node_keys, _ = tree_mean(node_keys, node_weight, parent_of, depth, up_to=1)
    return node_keys, attention, exchange

  return aggregate_keys


def initial_state(setup: ClientSetup, key_layers, num_nodes: int, key) -> WorldState:
  """The backbone, every node's copy of the key layers, round 0, no attention yet."""
  backbone, keys = split_params(setup.init_params(key), key_layers)
  return WorldState(
    backbone,
    tree_broadcast(keys, num_nodes),
    jnp.zeros((), jnp.int32),
    jnp.zeros(num_nodes, jnp.float32),
    jnp.zeros((num_nodes, num_nodes), jnp.float32),
  )


def aggregate_backbone(
  tree, dp_clip_norm, dp_noise_multiplier, state, node_backbone, node_weight, key
):
  """The new backbone: the token-weighted mean up to the root, or, with DP at the federation
  boundary (``dp_clip_norm > 0``), each federation's mean clipped and noised
  (``private_backbone``)."""
  parent_of, depth = tree.parent_of, tree.depth
  if dp_clip_norm == 0:
    return tree_gather(tree_mean(node_backbone, node_weight, parent_of, depth)[0], 0)
  per_federation, weight = tree_mean(node_backbone, node_weight, parent_of, depth, up_to=1)
  return private_backbone(
    state.backbone,
    per_federation,
    weight,
    np.flatnonzero(depth == 1),
    dp_clip_norm,
    dp_noise_multiplier,
    key,
  )


def aggregate_tree(tree, key_layers, aggregate_backbone, aggregate_keys, carry):
  """Backbone and key layers aggregated up the federation tree (attention across nodes)."""
  state, cohort, key = carry["state"], carry["cohort"], carry["key"]
  num_nodes = tree.num_nodes
  client_backbone, client_keys = split_params(carry["trained"], key_layers)
  leaves = jnp.asarray(tree.client_node)[jnp.asarray(cohort.client_ids)]
  tokens = cohort.num_examples.astype(jnp.float32)
  node_weight = jnp.zeros(num_nodes, jnp.float32).at[leaves].set(tokens)
  place = lambda stacked, rows: jax.tree.map(lambda s, r: s.at[leaves].set(r), stacked, rows)
  backbone = state.backbone
  if backbone:
    node_backbone = place(tree_broadcast(state.backbone, num_nodes), client_backbone)
    backbone = aggregate_backbone(state, node_backbone, node_weight, key)
  node_keys, attention, exchange = aggregate_keys(
    state, place(state.keys, client_keys), node_weight
  )
  metrics = {"train_loss": weighted_mean(carry["result"].mean_loss, tokens)}
  state = WorldState(backbone, node_keys, state.round + 1, attention, exchange)
  return {"state": state, "metrics": metrics}


def train_members(train, start: np.ndarray, carry) -> dict:
  """Each member trains the shared backbone with its sub-federation's key layers."""
  state, cohort = carry["state"], carry["cohort"]
  ids = jnp.asarray(cohort.client_ids)
  params = merge_params(
    tree_broadcast(state.backbone, ids.shape[0]),
    tree_gather(state.keys, jnp.asarray(start)[ids]),
  )
  trained, result = train(params, cohort, carry["key"], None)
  return {**carry, "trained": trained, "result": result}


def worldlm(
  setup: ClientSetup,
  *,
  variant: str = "worldlm",
  key_layers=("block1",),
  similarity: str = "cosine",
  temperature: float = 0.05,
  include_parent: bool = True,
  cross_temperature: float = 0.05,
  global_every: int = 2,
  dp_noise_multiplier: float = 0.0,
  dp_clip_norm: float = 0.0,
  dp_delta: float = 1e-5,
) -> Algorithm:
  """WorldLM or one of its baselines (module docstring).

  Args:
    setup: client training; ``setup.client_paths`` name the clients' places in the tree.
    variant: ``worldlm``, ``fedavg``, ``hierfavg``, ``fedper`` or ``federation_local``.
    key_layers: names of path components that make a parameter a key layer (``worldlm``,
      ``fedper``; the other variants fix it).
    similarity: ``cosine`` or ``dot`` (``ops.tree_aggregation.row_similarity``).
    temperature: the attention temperature over children.
    include_parent: a node attends to its own previous K too.
    cross_temperature: the residual exchange's temperature (0: no exchange).
    global_every: ``hierfavg``'s cloud period in rounds.
    dp_noise_multiplier, dp_clip_norm, dp_delta: DP at the federation boundary (clip norm 0:
      none; noise multiplier 0: clipping alone).

  Returns:
    An ``Algorithm``: every client each round; personal models are B with the client's
    start node's K (``fedavg``: one global model).
  """
  tree = FederationTree.from_paths(setup.client_paths)
  num_nodes, dp = tree.num_nodes, dp_clip_norm > 0
  start = start_nodes(tree, variant)
  federations = np.flatnonzero(tree.depth == 1)
  if variant == "fedavg":
    key_layers = ()
  elif variant in ("hierfavg", "federation_local"):
    key_layers = ALL
  train = setup.cohort_trainer(None, params_axis=0, context_axis=None)

  aggregate_keys = key_aggregator(
    tree,
    variant,
    similarity=similarity,
    temperature=temperature,
    include_parent=include_parent,
    cross_temperature=cross_temperature,
    global_every=global_every,
    dp=dp,
  )

  backbone_step = functools.partial(
    aggregate_backbone, tree, dp_clip_norm if dp else 0.0, dp_noise_multiplier
  )
  server = functools.partial(aggregate_tree, tree, key_layers, backbone_step, aggregate_keys)
  round_fn = phases.Phases(
    phases.clients(functools.partial(train_members, train, start)), phases.server(server)
  )

  def personal_params(state):
    nodes = jnp.asarray(start)
    return merge_params(tree_broadcast(state.backbone, len(start)), tree_gather(state.keys, nodes))

  privacy = functools.partial(boundary_privacy, len(federations), dp_noise_multiplier, dp_delta)

  backbone_shape, keys_shape = split_params(setup.params_shape, key_layers)
  fedavg = variant == "fedavg"
  return Algorithm(
    functools.partial(initial_state, setup, key_layers, num_nodes),
    round_fn,
    global_params=(lambda state: merge_params(state.backbone, {})) if fedavg else None,
    personal_params=None if fedavg else personal_params,
    download=(backbone_shape, keys_shape),
    upload=(backbone_shape, {} if variant == "fedper" else keys_shape),
    privacy=privacy if dp_noise_multiplier > 0 else None,
  )


@dataclasses.dataclass(frozen=True)
class WorldLMConfig:
  """WorldLM's options (``algorithm.worldlm``); the module docstring says what each does."""

  variant: str = "worldlm"
  key_layers: str = "block1"  # comma-separated path components
  similarity: str = "cosine"
  temperature: float = 0.05
  include_parent: bool = True
  cross_temperature: float = 0.05
  global_every: int = 2
  dp_noise_multiplier: float = 0.0
  dp_clip_norm: float = 0.0
  dp_delta: float = 1e-5

  def __post_init__(self):
    prefix = "algorithm.worldlm."
    typed_fields(self, prefix)
    one_of(prefix + "variant", self.variant, VARIANTS)
    one_of(prefix + "similarity", self.similarity, SIMILARITIES)
    require(self.temperature > 0, prefix + "temperature", "> 0", self.temperature)
    require(
      self.cross_temperature >= 0,
      prefix + "cross_temperature",
      ">= 0 (0: no exchange)",
      self.cross_temperature,
    )
    require(self.global_every >= 1, prefix + "global_every", ">= 1", self.global_every)
    require(
      self.dp_noise_multiplier >= 0,
      prefix + "dp_noise_multiplier",
      ">= 0",
      self.dp_noise_multiplier,
    )
    require(
      self.dp_noise_multiplier == 0 or self.dp_clip_norm > 0,
      prefix + "dp_clip_norm",
      "> 0 when dp_noise_multiplier > 0",
      self.dp_clip_norm,
    )
    require(0 < self.dp_delta < 1, prefix + "dp_delta", "in (0, 1)", self.dp_delta)


def _check(setup: ClientSetup, options: WorldLMConfig, config) -> None:
  """Refuse what WorldLM would silently ignore, naming the field."""
  if setup.client_paths is None:
    raise ValueError(
      "algorithm.name='worldlm' needs a federation tree: data.partition='natural' on a source "
      "whose clients are named by paths (data.source='text_world')"
    )
  if config.aggregation.rule != "mean" or config.aggregation.clip_norm > 0:
    raise ValueError(
      "algorithm.name='worldlm' aggregates along its tree: aggregation.rule must be 'mean' "
      "and aggregation.clip_norm 0 (use algorithm.worldlm.dp_* for privacy)"
    )
  if config.privacy.noise_multiplier > 0:
    raise ValueError(
      "algorithm.name='worldlm' adds its DP at the federation boundary: set "
      "algorithm.worldlm.dp_noise_multiplier instead of privacy.noise_multiplier"
    )
  if options.variant in ("worldlm", "fedper"):
    backbone, keys = split_params(setup.params_shape, options.key_layers.split(","))
    names = sorted({p for path in backbone | keys for p in path.split("/")[:-1]})
    require(
      bool(backbone) and bool(keys),
      "algorithm.worldlm.key_layers",
      f"path components that select some but not all parameters ({', '.join(names)})",
      options.key_layers,
    )


def _build(setup, options: WorldLMConfig, config) -> Algorithm:
  _check(setup, options, config)
  fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
  return worldlm(setup, **{**fields, "key_layers": tuple(options.key_layers.split(","))})


ENTRY = AlgorithmEntry(_build, WorldLMConfig, every_client_each_round=True)
