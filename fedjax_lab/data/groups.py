"""Federations whose clients fall into known latent groups (clustered / personalized FL).

A group shift makes clients of different groups need different models even on the same
inputs: ``label_permutation`` maps group ``g``'s labels through a fixed random permutation
``pi_g`` (``pi_0`` is the identity), ``rotation`` turns group ``g``'s images by ``90 * g``
degrees (at most 4 groups). The shift is applied to each client's train and test splits;
the pooled global test set is left as it is. Shakespeare clients (play, character) group by
the play's genre in the First Folio (comedy, history, tragedy; Pericles counted a comedy).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedjax_lab.data.federated import FederatedData
from fedjax_lab.data.sources import PLAY_GENRE

GROUP_SHIFTS = ("label_permutation", "rotation")


def contiguous_groups(num_clients: int, num_groups: int) -> np.ndarray:
  """``[num_clients]`` group ids: client ``k`` is in group ``k * G // N`` (sizes differ by <= 1)."""
  return (np.arange(num_clients) * num_groups // num_clients).astype(np.int32)


def label_permutations(num_groups: int, num_classes: int, seed: int) -> np.ndarray:
  """``[G, num_classes]``: row 0 the identity, the others independent random permutations."""
  rng = np.random.default_rng(seed)
  rows = [np.arange(num_classes)] + [rng.permutation(num_classes) for _ in range(num_groups - 1)]
  return np.stack(rows).astype(np.int32)


def _rotate(images: np.ndarray, quarter_turns: int) -> np.ndarray:
  """``[clients_examples, H, W, C]`` images turned by ``90 * quarter_turns`` degrees."""
  return np.rot90(images, k=quarter_turns, axes=(-3, -2)).copy()


def shift_by_group(data: FederatedData, groups: np.ndarray, kind: str, seed: int) -> FederatedData:
  """``data`` with each client's train and test splits shifted by its group (module doc).

  Sets ``data.client_groups = groups``.
  """
  groups = np.asarray(groups, np.int32)
  if groups.shape != (data.num_clients,):
    raise ValueError(
      f"groups must have one id per client ({data.num_clients}), got shape {groups.shape}"
    )
  data.arrays(f"data.group_shift={kind}")
  num_groups = int(groups.max()) + 1
  if kind == "label_permutation":
    permutations = label_permutations(num_groups, data.num_classes, seed)

    def shift(arrays):
      row_groups = groups[arrays.client_of_rows()]
      labels = permutations[row_groups.reshape((-1,) + (1,) * (arrays.y.ndim - 1)), arrays.y]
      return arrays.replace_rows(y=labels)

  elif kind == "rotation":
    if data.train.x.ndim != 4 or num_groups > 4:
      raise ValueError(
        "data.group_shift='rotation' needs image data [H, W, C] and at most "
        f"4 groups, got inputs of rank {data.train.x.ndim - 1} and {num_groups} groups"
      )

    def shift(arrays):
      row_groups, images = groups[arrays.client_of_rows()], np.array(arrays.x)
      for group in range(1, num_groups):
        images[row_groups == group] = _rotate(images[row_groups == group], group)
      return arrays.replace_rows(x=images)

  else:
    raise ValueError(f"data.group_shift={kind!r} is unknown; allowed: {', '.join(GROUP_SHIFTS)}")
  return dataclasses.replace(
    data, train=shift(data.train), test=shift(data.test), client_groups=groups
  )


def shakespeare_genres(client_group_names: list[str]) -> np.ndarray:
  """Genre ids (``GENRES``) of clients named ``play/character``; -1 for a play not listed."""
  return np.array([PLAY_GENRE.get(name.split("/")[0], -1) for name in client_group_names], np.int32)
