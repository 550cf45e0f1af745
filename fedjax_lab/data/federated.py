"""``FederatedData``: per-client train/test arrays padded to ``[num_clients, max_examples, ...]``.

Host-resident numpy. A round gathers only its cohort (``cohort``) and moves that to the device.
Row ``k`` of ``train_x`` holds client ``k``'s ``train_num_examples[k]`` real examples first,
then zero padding; every consumer masks by position ``< num_examples``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedjax_lab.data import partition
from fedjax_lab.data.sources import Dataset
from fedjax_lab.plots import pyplot


@dataclasses.dataclass(frozen=True)
class Cohort:
  """The data of the clients that take part in one round, leading axis ``[cohort]``."""

  client_ids: np.ndarray  # [cohort] int32
  x: np.ndarray  # [cohort, max_examples, ...]
  y: np.ndarray  # [cohort, max_examples, ...] int32
  num_examples: np.ndarray  # [cohort] int32


def _pad_clients(
  values: np.ndarray, client_indices: list[np.ndarray], max_examples: int
) -> np.ndarray:
  padded = np.zeros((len(client_indices), max_examples) + values.shape[1:], values.dtype)
  for client, indices in enumerate(client_indices):
    padded[client, : len(indices)] = values[indices]
  return padded


def _check_rows(where: str, x, y, real: np.ndarray, num_classes: int) -> None:
  """``ValueError`` at the first real row (``real [clients, rows]``) whose labels fall outside
  ``[0, num_classes)`` or whose inputs are not finite; ``where.format(client, row)`` names it."""
  per_row = lambda values: values.reshape(values.shape[:2] + (-1,)).all(axis=2)
  labels_ok = per_row((y >= 0) & (y < num_classes))
  bad = np.argwhere(real & ~labels_ok)
  if bad.size:
    client, row = bad[0]
    labels = np.asarray(y[client, row]).ravel()
    label = labels[(labels < 0) | (labels >= num_classes)][0]
    raise ValueError(
      f"data: {where.format(client, row)} has label {label}, outside [0, {num_classes})"
    )
  if np.issubdtype(x.dtype, np.inexact):
    bad = np.argwhere(real & ~per_row(np.isfinite(x)))
    if bad.size:
      raise ValueError(f"data: {where.format(*bad[0])} holds NaN or infinite inputs")


@dataclasses.dataclass(frozen=True)
class FederatedData:
  """A federation: padded per-client splits, plus the source's pooled global test set."""

  train_x: np.ndarray
  train_y: np.ndarray
  train_num_examples: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  test_num_examples: np.ndarray
  global_test_x: np.ndarray
  global_test_y: np.ndarray
  num_classes: int
  client_groups: np.ndarray | None = None  # [num_clients] true latent group, when known
  # [num_clients] '/'-separated names of natural clients, e.g. their place in a federation tree
  client_paths: tuple[str, ...] | None = None

  @classmethod
  def from_indices(
    cls, dataset: Dataset, train_indices: list[np.ndarray], test_indices: list[np.ndarray]
  ) -> FederatedData:
    """Build from index lists into ``dataset.train_*`` (clients' own test parts included)."""
    for k, (tr, te) in enumerate(zip(train_indices, test_indices)):
      if np.intersect1d(tr, te).size:
        raise AssertionError(f"client {k}: train and test splits overlap")
    max_train = max(1, max(len(i) for i in train_indices))
    max_test = max(1, max(len(i) for i in test_indices))
    return cls(
      train_x=_pad_clients(dataset.train_x, train_indices, max_train),
      train_y=_pad_clients(dataset.train_y, train_indices, max_train),
      train_num_examples=np.array([len(i) for i in train_indices], np.int32),
      test_x=_pad_clients(dataset.train_x, test_indices, max_test),
      test_y=_pad_clients(dataset.train_y, test_indices, max_test),
      test_num_examples=np.array([len(i) for i in test_indices], np.int32),
      global_test_x=dataset.test_x,
      global_test_y=dataset.test_y,
      num_classes=dataset.num_classes,
    )

  @classmethod
  def by_group(cls, dataset: Dataset, test_fraction: float, seed: int) -> FederatedData:
    """One client per natural group of ``dataset`` (``partition.natural``), named by its group
    (``client_paths``), ``test_fraction`` of each client's examples held out as its own test
    split."""
    clients = partition.natural(dataset.train_groups)
    train, test = partition.train_test_split(clients, test_fraction, seed)
    names = tuple(dataset.group_names[dataset.train_groups[indices[0]]] for indices in clients)
    return dataclasses.replace(cls.from_indices(dataset, train, test), client_paths=names)

  def validate(self) -> None:
    """Check the federation at the boundary, before anything is compiled: each split's arrays
    agree in shape, its counts lie in ``[0, padded axis]``, and every real row holds labels in
    ``[0, num_classes)`` and finite inputs (padding rows may hold anything: every consumer
    selects them away). Raises ``ValueError`` naming the first offending client and row."""
    splits = [
      ("train", self.train_x, self.train_y, np.asarray(self.train_num_examples)),
      ("test", self.test_x, self.test_y, np.asarray(self.test_num_examples)),
    ]
    for split, x, y, counts in splits:
      if x.ndim < 2 or y.shape[:2] != x.shape[:2] or counts.shape != (x.shape[0],):
        raise ValueError(
          f"data: {split}_x {x.shape}, {split}_y {y.shape} and {split}_num_examples "
          f"{counts.shape} must share [num_clients, max_examples] (and [num_clients])"
        )
      outside = np.flatnonzero((counts < 0) | (counts > x.shape[1]))
      if outside.size:
        client = outside[0]
        raise ValueError(
          f"data: {split}_num_examples[{client}] = {counts[client]} is outside [0, "
          f"{x.shape[1]}] (the padded axis of {split}_x)"
        )
      real = np.arange(x.shape[1])[None] < counts[:, None]
      _check_rows(f"client {{}}'s {split} example {{}}", x, y, real, self.num_classes)
    global_x, global_y = self.global_test_x[None], self.global_test_y[None]
    everywhere = np.ones(global_y.shape[:2], bool)
    _check_rows("global test example {1}", global_x, global_y, everywhere, self.num_classes)
    if self.train_y.shape[0] != self.test_y.shape[0]:
      raise ValueError(
        f"data: {self.train_y.shape[0]} clients in train_x but {self.test_y.shape[0]} in test_x"
      )

  @property
  def num_clients(self) -> int:
    return len(self.train_num_examples)

  @property
  def max_examples(self) -> int:
    return self.train_x.shape[1]

  def cohort(self, client_ids) -> Cohort:
    """Gather the training data of ``client_ids`` (host-side fancy indexing)."""
    client_ids = np.asarray(client_ids, np.int32)
    if client_ids.ndim != 1 or client_ids.min() < 0 or client_ids.max() >= self.num_clients:
      raise ValueError(
        f"client ids must be a 1-D array in [0, {self.num_clients}), got {client_ids}"
      )
    return Cohort(
      client_ids,
      self.train_x[client_ids],
      self.train_y[client_ids],
      self.train_num_examples[client_ids],
    )

  def pooled(self) -> FederatedData:
    """The same data as one client holding every training example (the Centralized baseline)."""
    mask = np.arange(self.max_examples)[None] < self.train_num_examples[:, None]
    x, y = self.train_x[mask][None], self.train_y[mask][None]
    tmask = np.arange(self.test_x.shape[1])[None] < self.test_num_examples[:, None]
    return dataclasses.replace(
      self,
      train_x=x,
      train_y=y,
      train_num_examples=np.array([x.shape[1]], np.int32),
      test_x=self.test_x[tmask][None],
      test_y=self.test_y[tmask][None],
      test_num_examples=np.array([int(tmask.sum())], np.int32),
      client_groups=None,
      client_paths=None,
    )

  def label_histogram(self) -> np.ndarray:
    """``[num_clients, num_classes]`` counts of each training label per client."""
    if self.train_y.ndim != 2:
      raise ValueError("label_histogram needs one label per example (classification data)")
    mask = np.arange(self.max_examples)[None] < self.train_num_examples[:, None]
    hist = np.zeros((self.num_clients, self.num_classes), np.int64)
    for client in range(self.num_clients):
      hist[client] = np.bincount(self.train_y[client][mask[client]], minlength=self.num_classes)
    return hist

  def summary(self) -> dict:
    """Per-client count statistics (and the label entropy, for classification data)."""
    counts = self.train_num_examples
    stats = {
      "num_clients": self.num_clients,
      "total_train": int(counts.sum()),
      "total_client_test": int(self.test_num_examples.sum()),
      "global_test": int(len(self.global_test_y)),
      "examples_min": int(counts.min()),
      "examples_median": float(np.median(counts)),
      "examples_max": int(counts.max()),
    }
    if self.train_y.ndim == 2:
      hist = self.label_histogram()
      p = hist / np.maximum(hist.sum(1, keepdims=True), 1)
      entropy = -(p * np.log(np.where(p > 0, p, 1))).sum(1)
      stats["mean_label_entropy_nats"] = float(entropy.mean())
      stats["mean_classes_per_client"] = float((hist > 0).sum(1).mean())
    return stats

  def plot_label_distribution(self, path, max_clients: int = 50) -> None:
    """Stacked bar chart of each client's label counts, written to ``path`` (PNG)."""
    plt = pyplot()

    hist = self.label_histogram()[:max_clients]
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(hist)), 3.5))
    bottom = np.zeros(len(hist))
    cmap = plt.get_cmap("tab20")
    for c in range(self.num_classes):
      ax.bar(
        np.arange(len(hist)),
        hist[:, c],
        bottom=bottom,
        color=cmap(c % 20),
        width=0.9,
        label=str(c) if self.num_classes <= 20 else None,
      )
      bottom += hist[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("training examples")
    if self.num_classes <= 20:
      ax.legend(title="label", fontsize=6, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
