"""Personalization ops: a model split into a shared part the server averages and a personal
part each client keeps (FedPer, FedRep, LG-FedAvg, FedBN), and the mixture of a personal and
the global model (APFL).

Parts are chosen by a predicate on a parameter's path (``"head/kernel"``,
``"block1/norm0/scale"``): ``split`` returns two nested dicts holding the leaves of each part
(the structure of Flax parameters), ``merge`` puts them back.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import traverse_util

Params = dict
PathPredicate = Callable[[str], bool]


def leaf_paths(params: Params) -> list[str]:
  """Every leaf's path, ``/``-joined, in Flax's order."""
  return ["/".join(path) for path in traverse_util.flatten_dict(params)]


def split(params: Params, personal: PathPredicate) -> tuple[Params, Params]:
  """``(shared, personal)``: the leaves whose path ``personal`` rejects, and those it takes,
  each as a nested dict (an empty dict when a part has no leaf)."""
  flat = traverse_util.flatten_dict(params)
  mine = {path: leaf for path, leaf in flat.items() if personal("/".join(path))}
  rest = {path: leaf for path, leaf in flat.items() if path not in mine}
  return traverse_util.unflatten_dict(rest), traverse_util.unflatten_dict(mine)


def merge(shared: Params, personal: Params) -> Params:
  """The whole model from the two parts of ``split``."""
  flat = {**traverse_util.flatten_dict(shared), **traverse_util.flatten_dict(personal)}
  return traverse_util.unflatten_dict(flat)


def head_layers(path: str) -> bool:
  """The read-out layer, ``head`` (every registered model names its last layer so)."""
  return path.split("/")[0] == "head"


def body_layers(path: str) -> bool:
  """Every layer but the read-out ``head``: LG-FedAvg's local representation."""
  return not head_layers(path)


def normalization_layers(path: str) -> bool:
  """The normalization layers' scales and offsets (GroupNorm here; a module named ``norm*``
  or Flax's ``GroupNorm_*``/``LayerNorm_*``): FedBN's local parameters."""
  return any("norm" in part.lower() for part in path.split("/")[:-1])


def mix(weight: jax.Array, personal: Params, shared: Params) -> Params:
  """``weight * personal + (1 - weight) * shared`` (APFL's personalized model, ``alpha``)."""
  return jax.tree.map(lambda v, w: weight * v + (1 - weight) * w, personal, shared)
