"""``FederatedData``: a federation's per-client train/test splits in a ragged store.

Each split is a ``ClientArrays`` (``data/ragged.py``): the clients' real examples flat, with
offsets, as numpy arrays or memory maps; host memory follows the real examples, not
``num_clients x max_examples``. A round gathers only its cohort (``cohort``): the cohort's real
rows, moved to the device in chunks of one fixed size and written there into the padded layout
``[cohort, max_examples, ...]`` the methods read, real examples first and zeros after
(``data/transfer.py``; every consumer also masks by position ``< num_examples``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from fedjax_lab.data import partition, transfer
from fedjax_lab.data.ragged import ClientArrays, ClientStore, ProcessShard, drop_pages
from fedjax_lab.data.sources import Dataset
from fedjax_lab.plots import pyplot


@dataclasses.dataclass(frozen=True)
class Cohort:
  """The data of the clients that take part in one round, leading axis ``[cohort]``."""

  client_ids: np.ndarray  # [cohort] int32
  x: jax.Array  # [cohort, max_examples, ...]
  y: jax.Array  # [cohort, max_examples, ...] int32
  num_examples: np.ndarray  # [cohort] int32
  # [cohort] float32: each client's simulated seconds from dispatch until its result reaches
  # the server, for asynchronous methods (``AlgorithmEntry.asynchronous``); None otherwise
  seconds: np.ndarray | None = None
  # [cohort] int32: the most local steps each client takes this round (stragglers' partial
  # work, ``systems.stragglers=partial``); None: all of them
  steps: np.ndarray | None = None


jax.tree_util.register_dataclass(
  Cohort,
  data_fields=["client_ids", "x", "y", "num_examples", "seconds", "steps"],
  meta_fields=[],
)


VALIDATION_ROWS = 1 << 16  # rows checked at once: temporaries stay small on large stores


def _first_bad_row(values, row_ok) -> int | None:
  """The first row of ``values`` (checked ``VALIDATION_ROWS`` at a time) for which
  ``row_ok(rows) -> [rows, ...] bool`` is not all true, or None. A memory-mapped ``values`` is
  streamed: each block's pages are dropped once checked (``ragged.drop_pages``)."""
  for start in range(0, len(values), VALIDATION_ROWS):
    block = np.asarray(values[start : start + VALIDATION_ROWS])
    bad = np.flatnonzero(~row_ok(block).reshape(len(block), -1).all(axis=1))
    drop_pages(values, start, start + len(block))
    if bad.size:
      return start + int(bad[0])
  return None


def _check_rows(where: str, x, y, client_of_rows, num_classes: int, lowest: int = 0) -> None:
  """``ValueError`` at the first row whose labels fall outside ``[lowest, num_classes)`` or
  whose inputs are not finite; ``where.format(client, row)`` names it (``client_of_rows
  [rows]``, the row counted within its client)."""

  def name(flat_row):
    client = client_of_rows[flat_row]
    return where.format(client, flat_row - np.searchsorted(client_of_rows, client))

  bad = _first_bad_row(y, lambda labels: (labels >= lowest) & (labels < num_classes))
  if bad is not None:
    labels = np.asarray(y[bad]).ravel()
    label = labels[(labels < lowest) | (labels >= num_classes)][0]
    raise ValueError(f"data: {name(bad)} has label {label}, outside [{lowest}, {num_classes})")
  if np.issubdtype(x.dtype, np.inexact):
    bad = _first_bad_row(x, np.isfinite)
    if bad is not None:
      raise ValueError(f"data: {name(bad)} holds NaN or infinite inputs")


@dataclasses.dataclass(frozen=True)
class FederatedData:
  """A federation: each client's train and test split (``ClientArrays``), plus the source's
  pooled global test set.

  ``train_x``, ``train_y``, ``train_num_examples`` (and ``test_*``, ``max_examples``) are
  views in the padded layout ``[num_clients, max_examples, ...]``, built on first use: for
  small federations, notebooks and tests. The engine never builds them: it reads ``train`` and
  ``test`` by cohort and by block of clients.
  """

  train: ClientStore
  test: ClientStore
  global_test_x: np.ndarray
  global_test_y: np.ndarray
  num_classes: int
  client_groups: np.ndarray | None = None  # [num_clients] true latent group, when known
  # [num_clients] '/'-separated names of natural clients, e.g. their place in a federation tree
  client_paths: tuple[str, ...] | None = None
  # each label row is a set of class ids padded with -1 (StackOverflow's tags; ops/losses.py)
  label_sets: bool = False

  @classmethod
  def from_indices(
    cls, dataset: Dataset, train_indices: list[np.ndarray], test_indices: list[np.ndarray]
  ) -> FederatedData:
    """Build from index lists into ``dataset.train_*`` (clients' own test parts included)."""
    for k, (tr, te) in enumerate(zip(train_indices, test_indices)):
      if np.intersect1d(tr, te).size:
        raise AssertionError(f"client {k}: train and test splits overlap")
    return cls(
      train=ClientArrays.from_indices(dataset.train_x, dataset.train_y, train_indices),
      test=ClientArrays.from_indices(dataset.train_x, dataset.train_y, test_indices),
      global_test_x=dataset.test_x,
      global_test_y=dataset.test_y,
      num_classes=dataset.num_classes,
    )

  @classmethod
  def from_padded(
    cls,
    train_x,
    train_y,
    train_num_examples,
    test_x,
    test_y,
    test_num_examples,
    global_test_x,
    global_test_y,
    num_classes: int,
    **fields,
  ) -> FederatedData:
    """From arrays in the padded layout ``[num_clients, max_examples, ...]`` (client ``k``'s
    first ``num_examples[k]`` rows are real); ``fields``: ``client_groups``, ``client_paths``.
    Raises ``ValueError`` naming the split whose shapes or counts disagree."""
    splits = {}
    for split, x, y, counts in (
      ("train", train_x, train_y, np.asarray(train_num_examples)),
      ("test", test_x, test_y, np.asarray(test_num_examples)),
    ):
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
      splits[split] = ClientArrays.from_padded(x, y, counts)
    return cls(
      **splits,
      global_test_x=global_test_x,
      global_test_y=global_test_y,
      num_classes=num_classes,
      **fields,
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
    """Check the federation at the boundary, before anything is compiled: both splits hold the
    same clients, and every example held in arrays has labels in ``[0, num_classes)`` and
    finite inputs (clients made on demand, ``data/generated.py``, are valid by construction).
    Raises ``ValueError`` naming the first offending client and example."""
    if self.train.num_clients != self.test.num_clients:
      raise ValueError(
        f"data: {self.train.num_clients} clients in the train split but "
        f"{self.test.num_clients} in the test split"
      )
    lowest = -1 if self.label_sets else 0
    for split, arrays in (("train", self.train), ("test", self.test)):
      if not isinstance(arrays, ClientArrays):  # made on demand, valid by construction
        continue
      if arrays.y.shape[:1] != arrays.x.shape[:1] or arrays.x.ndim < 1:
        raise ValueError(f"data: {split} inputs {arrays.x.shape} and labels {arrays.y.shape}")
      where = f"client {{}}'s {split} example {{}}"
      rows = arrays.client_of_rows()
      _check_rows(where, arrays.x, arrays.y, rows, self.num_classes, lowest)
    everywhere = np.zeros(len(self.global_test_y), np.int64)
    _check_rows(
      "global test example {1}",
      self.global_test_x,
      self.global_test_y,
      everywhere,
      self.num_classes,
      lowest,
    )

  @property
  def num_clients(self) -> int:
    return self.train.num_clients

  @property
  def max_examples(self) -> int:
    """The largest client's training example count (the width of a cohort's padded layout)."""
    return self.train.max_examples

  @functools.cached_property
  def train_num_examples(self) -> np.ndarray:
    return self.train.num_examples

  @functools.cached_property
  def test_num_examples(self) -> np.ndarray:
    return self.test.num_examples

  @functools.cached_property
  def _padded_train(self):
    return self.train.padded(width=self.max_examples)

  @functools.cached_property
  def _padded_test(self):
    return self.test.padded()

  @property
  def train_x(self) -> np.ndarray:
    return self._padded_train[0]

  @property
  def train_y(self) -> np.ndarray:
    return self._padded_train[1]

  @property
  def test_x(self) -> np.ndarray:
    return self._padded_test[0]

  @property
  def test_y(self) -> np.ndarray:
    return self._padded_test[1]

  @property
  def sequences(self) -> bool:
    """Whether each example carries a sequence of labels (next-token data)."""
    return self.global_test_y.ndim > 1

  def cohort(
    self, client_ids, size: int | None = None, sharding=None, reporting: int | None = None
  ) -> Cohort:
    """The training data of ``client_ids`` on the device, in the padded layout
    ``[cohort, max_examples, ...]`` (a shape that depends only on the cohort size, so the
    round compiles once). Only the cohort's real rows cross to the device, in chunks of one
    size per cohort size (``transfer.move_rows``; ``transfer.chunk_rows`` of this federation's
    mean rows per client times the cohort size).
    ``size``: fill the cohort up to that many clients with empty ones (the first client's id,
    no examples). ``reporting``: only the first that many clients bring their examples; the
    others stay in the cohort, each under its own id, with none (clients lost to the system,
    whose per-client state a method must then leave as it was). ``sharding``: the cohort's
    layout over devices (leading axis split); with several processes each reads only the
    clients its store holds (``shard``)."""
    client_ids = np.asarray(client_ids, np.int32)
    size = size or len(client_ids)
    if (
      client_ids.ndim != 1
      or size < len(client_ids)
      or (len(client_ids) and (client_ids.min() < 0 or client_ids.max() >= self.num_clients))
    ):
      raise ValueError(
        f"client ids must be a 1-D array in [0, {self.num_clients}) of at most {size}, got "
        f"{client_ids}"
      )
    empty = size - len(client_ids)
    reporting = len(client_ids) if reporting is None else reporting
    counts = np.zeros(size, np.int32)
    counts[:reporting] = self.train.num_examples[client_ids[:reporting]]
    local_devices = 1 if sharding is None else len(sharding.addressable_devices)
    chunk = transfer.chunk_rows(self.train.total / self.num_clients * size, local_devices)
    bringing = client_ids[:reporting]
    x, y = transfer.move_rows(self.train, bringing, counts, self.max_examples, chunk, sharding)
    filler = client_ids[:1] if len(client_ids) else np.zeros(1, np.int32)
    client_ids = np.concatenate([client_ids, np.repeat(filler, empty)])
    return Cohort(client_ids, x, y, counts.astype(np.int32))

  def arrays(self, purpose: str) -> tuple[ClientArrays, ClientArrays]:
    """``(train, test)`` when both are held in arrays; otherwise ``ValueError`` naming
    ``purpose`` (what needs them) and the store that does not hold them."""
    if not (isinstance(self.train, ClientArrays) and isinstance(self.test, ClientArrays)):
      raise ValueError(
        f"data: {purpose} needs a federation held in arrays, not clients made on demand "
        f"({type(self.train).__name__})"
      )
    return self.train, self.test

  def subset(self, client_ids) -> FederatedData:
    """The federation of ``client_ids`` alone, renumbered ``0 .. len(client_ids) - 1`` in that
    order (the global test set kept whole)."""
    client_ids = np.asarray(client_ids, np.int64)
    train, test = self.arrays("subset")
    return dataclasses.replace(
      self,
      train=train.select(client_ids),
      test=test.select(client_ids),
      client_groups=None if self.client_groups is None else self.client_groups[client_ids],
      client_paths=None
      if self.client_paths is None
      else tuple(self.client_paths[k] for k in client_ids),
    )

  def pooled(self) -> FederatedData:
    """The same data as one client holding every training example (the Centralized baseline)."""
    one_client = lambda arrays: ClientArrays(
      arrays.x, arrays.y, np.array([0, arrays.total], np.int64)
    )
    train, test = self.arrays("pooling every example into one client (centralized)")
    return dataclasses.replace(
      self,
      train=one_client(train),
      test=one_client(test),
      client_groups=None,
      client_paths=None,
    )

  def shard(self, process: int, count: int) -> FederatedData:
    """What process ``process`` of ``count`` holds: the clients ``k % count == process`` of
    both splits (``ragged.ProcessShard``; the global test set whole). Its ``cohort`` with a
    ``sharding`` over every process's devices reads only these clients."""
    return dataclasses.replace(
      self,
      train=ProcessShard.of(self.train, process, count),
      test=ProcessShard.of(self.test, process, count),
    )

  def label_histogram(self) -> np.ndarray:
    """``[num_clients, num_classes]`` counts of each training label per client."""
    if self.sequences:
      raise ValueError("label_histogram needs one label per example (classification data)")
    train, _ = self.arrays("label_histogram")
    hist = np.zeros((self.num_clients, self.num_classes), np.int64)
    np.add.at(hist, (train.client_of_rows(), np.asarray(train.y)), 1)
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
    if not self.sequences:
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
