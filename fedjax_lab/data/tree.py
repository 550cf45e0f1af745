"""Federations of federations as data: a tree over nodes, clients at the leaves.

Node 0 is the root (the world). Every other node ``v`` has a parent ``parent_of[v] < v``
(parents are numbered before their children), so the tree is acyclic by construction and a
level-by-level pass is a static loop over depths, never over nodes. Clients are the leaves;
internal nodes are (sub-)federations. ``client_node[k]`` is client ``k``'s node.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedjax_lab.plots import pyplot


@dataclasses.dataclass(frozen=True)
class FederationTree:
  """``parent_of [num_nodes]`` (``-1`` for the root, node 0), ``names [num_nodes]`` (paths such
  as ``code/email/parser``), ``client_node [num_clients]`` (the leaf node of each client)."""

  parent_of: np.ndarray
  names: tuple[str, ...]
  client_node: np.ndarray

  def __post_init__(self):
    parent_of, num_nodes = np.asarray(self.parent_of), len(self.parent_of)
    if num_nodes == 0 or parent_of[0] != -1:
      raise ValueError("federation tree: node 0 must be the root (parent -1)")
    if not np.all((parent_of[1:] >= 0) & (parent_of[1:] < np.arange(1, num_nodes))):
      raise ValueError("federation tree: every non-root node's parent must be an earlier node")
    if len(self.names) != num_nodes:
      raise ValueError(f"federation tree: {len(self.names)} names for {num_nodes} nodes")
    internal = set(parent_of[1:].tolist())
    clients = np.asarray(self.client_node)
    if len(set(clients.tolist())) != len(clients) or any(c in internal for c in clients.tolist()):
      raise ValueError("federation tree: clients must be distinct leaves")
    if set(range(1, num_nodes)) - internal - set(clients.tolist()):
      raise ValueError("federation tree: every leaf must be a client")

  @classmethod
  def from_paths(cls, client_paths) -> FederationTree:
    """The tree whose clients are named by ``/``-separated paths (``drama/tragedy/hamlet``):
    each path prefix is a node; clients keep the given order."""
    names, index = ["world"], {"": 0}
    parents = [-1]
    for path in client_paths:
      parts = path.split("/")
      for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        if prefix not in index:
          index[prefix] = len(names)
          names.append(prefix)
          parents.append(index["/".join(parts[: depth - 1])])
    return cls(
      np.array(parents, np.int32),
      tuple(names),
      np.array([index[p] for p in client_paths], np.int32),
    )

  @property
  def num_nodes(self) -> int:
    return len(self.parent_of)

  @property
  def num_clients(self) -> int:
    return len(self.client_node)

  @property
  def depth(self) -> np.ndarray:
    """``[num_nodes]``: 0 for the root, parent's depth + 1 otherwise."""
    depth = np.zeros(self.num_nodes, np.int32)
    for v in range(1, self.num_nodes):
      depth[v] = depth[self.parent_of[v]] + 1
    return depth

  @property
  def internal_nodes(self) -> np.ndarray:
    """Nodes with children, root first, in node order."""
    return np.unique(self.parent_of[1:])

  def ancestor_at_depth(self, depth: int) -> np.ndarray:
    """``[num_clients]``: each client's ancestor at ``depth`` (a client shallower than
    ``depth`` is its own)."""
    node_depth = self.depth
    nodes = self.client_node.copy()
    for k in range(self.num_clients):
      while node_depth[nodes[k]] > depth:
        nodes[k] = self.parent_of[nodes[k]]
    return nodes

  def plot(self, path, tokens_per_client=None) -> None:
    """``tree.png``: one row per depth, each node labelled by its last name part, the number of
    clients below it and (given ``tokens_per_client``) their tokens; lines to the parent."""
    plt = pyplot()

    depth, clients = self.depth, np.zeros(self.num_nodes, np.int64)
    tokens = np.zeros(self.num_nodes, np.int64)
    for k, node in enumerate(self.client_node):
      v = node
      while v >= 0:
        clients[v] += 1
        tokens[v] += 0 if tokens_per_client is None else int(tokens_per_client[k])
        v = self.parent_of[v]
    # x: leaves spread evenly in depth-first order, internal nodes centred over their leaves
    order = sorted(range(self.num_nodes), key=lambda v: self.names[v])
    leaves = [v for v in order if v not in set(self.internal_nodes.tolist())]
    x = np.zeros(self.num_nodes)
    x[leaves] = np.arange(len(leaves))
    for v in sorted(range(self.num_nodes), key=lambda v: -depth[v]):
      children = np.flatnonzero(self.parent_of == v)
      if len(children):
        x[v] = x[children].mean()
    leaf_set = set(leaves)
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(leaves)), 1.8 * (depth.max() + 1)))
    for v in range(1, self.num_nodes):
      p = self.parent_of[v]
      ax.plot([x[p], x[v]], [-depth[p], -depth[v]], color="0.7", lw=0.8, zorder=1)
    for v in range(self.num_nodes):
      label = self.names[v].split("/")[-1][:16]
      label += "" if v in leaf_set else f"\n{clients[v]} clients"
      if tokens_per_client is not None:
        label += f"{' ' if v in leaf_set else chr(10)}{tokens[v] / 1000:.0f}k tok"
      ax.text(
        x[v],
        -depth[v],
        label,
        ha="center",
        va="top" if v in leaf_set else "center",
        rotation=90 if v in leaf_set else 0,
        fontsize=6,
        zorder=2,
        bbox=dict(boxstyle="round", fc="white", ec="0.5", lw=0.5),
      )
    ax.set_ylim(-depth.max() - 1.6, 0.4)
    ax.set_axis_off()
    fig.savefig(path, dpi=120)
    plt.close(fig)
