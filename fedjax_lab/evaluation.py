"""Evaluation during a run: the global model on the pooled test set, each client's model (its
personal one, or the global model, or the global model adapted on its own training split) on
its own test split, and the clustering methods' agreement with the true groups. Memory follows
a block of ``EVALUATION_BLOCK`` clients, not the federation; under ``jax.distributed`` each
process evaluates its own clients and the results are gathered."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from fedjax_lab.algorithms import Algorithm
from fedjax_lab.config import ExperimentConfig
from fedjax_lab.data import FederatedData
from fedjax_lab.engine.evaluate import (
  client_accuracies,
  client_metrics,
  client_test_sums,
  evaluate_pooled,
)
from fedjax_lab.models import Model

ADAPTATION_STREAM = 0xADA  # fold_in constant: local adaptation's keys, apart from training's
EVALUATION_BLOCK = 512  # clients whose test splits are evaluated together
EVALUATION_STREAM = 0xE7A1  # the seed's stream that draws eval_clients


def local_adaptation(experiment):
  """None unless ``eval_finetune_epochs > 0``; then ``adapt(params, client_ids) -> [clients,
  ...]``: those clients' copies of ``params`` after that many epochs on their own training
  splits (``ClientSetup.local_adaptation``; each client's shuffling key the same at every
  evaluation)."""
  config, data = experiment.config, experiment.data
  if config.eval_finetune_epochs == 0:
    return None
  if experiment.algorithm.global_params is None:
    raise ValueError(
      f"eval_finetune_epochs must be 0 for {config.algorithm.name}: it has no global model to adapt"
    )
  adapt = experiment.setup.local_adaptation(config.eval_finetune_epochs)
  adapt = jax.jit(adapt) if experiment.setup.executor.jit_round else adapt
  keys = jax.random.split(
    jax.random.fold_in(jax.random.key(config.seed), ADAPTATION_STREAM), data.num_clients
  )

  def adapt_clients(params, client_ids):
    x, y, counts = data.train.padded(client_ids, width=data.max_examples)
    return adapt(params, x, y, counts, keys[client_ids])

  return adapt_clients


def evaluated_clients(config: ExperimentConfig, num_clients: int) -> np.ndarray:
  """The clients whose own test splits are evaluated: every one, or ``config.eval_clients``
  of them drawn once from the seed (sorted; the same at every evaluation)."""
  if config.eval_clients in (0, num_clients):
    return np.arange(num_clients)
  rng = np.random.default_rng([config.seed, EVALUATION_STREAM])
  return np.sort(rng.choice(num_clients, config.eval_clients, replace=False))


def global_test_rows(config: ExperimentConfig, num_examples: int) -> slice | np.ndarray:
  """The global test examples the global model is scored on: all, or
  ``config.eval_global_examples`` of them drawn once from the seed (sorted, the same at every
  evaluation; a memory-mapped test set reads only those)."""
  if config.eval_global_examples == 0 or config.eval_global_examples >= num_examples:
    return slice(None)
  rng = np.random.default_rng([config.seed, EVALUATION_STREAM, 1])
  return np.sort(rng.choice(num_examples, config.eval_global_examples, replace=False))


def evaluation_blocks(client_ids: np.ndarray, block: int = EVALUATION_BLOCK) -> list[np.ndarray]:
  """``client_ids`` in blocks of ``min(block, len(client_ids))``, the last one filled up with
  its first client (``evaluate`` drops the filler's results): one shape, one compilation."""
  if len(client_ids) == 0:
    return []
  block = min(block, len(client_ids))
  filled = np.resize(client_ids, -(-len(client_ids) // block) * block)
  return list(filled.reshape(-1, block))


class Evaluation(NamedTuple):
  """``evaluate``'s result: the ``metrics`` (a row's evaluation columns) and ``clients``: the
  evaluated ``client_ids`` with each one's ``client_accuracy`` (and ``adapted_client_accuracy``
  with local adaptation), ``[evaluated clients]`` arrays; empty without client test splits."""

  metrics: dict
  clients: dict[str, np.ndarray]


def evaluate(
  config: ExperimentConfig,
  model: Model,
  algorithm: Algorithm,
  state,
  data: FederatedData,
  adapt=None,
) -> Evaluation:
  """Global model on the pooled test set; each client's model on its own test split (when
  ``data.test_fraction > 0`` gave clients one); with ``adapt`` (``local_adaptation``) also
  each client's adapted global model on its split, as ``adapted_client_*``. Clients
  (``evaluated_clients``: all, or ``eval_clients`` of them) are evaluated in blocks of
  ``EVALUATION_BLOCK`` (``evaluation_blocks``): memory follows a block, not the federation."""
  metrics, per_client = {}, {}
  global_params = algorithm.global_params(state) if algorithm.global_params is not None else None
  if global_params is not None:
    rows = global_test_rows(config, len(data.global_test_y))
    x, y = data.global_test_x[rows], data.global_test_y[rows]
    pooled = evaluate_pooled(model.apply, global_params, x, y)
    metrics.update(global_accuracy=pooled["accuracy"], global_loss=pooled["loss"])
  if data.test.total > 0:  # clients hold test splits of their own
    models_of = client_models(algorithm, state)
    personal = models_of is not None
    width, sums, adapted = data.test.max_examples, [], []
    clients = evaluated_clients(config, data.num_clients)
    held = clients[data.test.owner(clients) == jax.process_index()]  # all, with one process
    for ids in evaluation_blocks(held):
      x, y, counts = data.test.padded(ids, width)
      block_params = models_of(ids) if personal else global_params
      test = lambda params, personal: client_test_sums(
        model.apply,
        params,
        x,
        y,
        counts,
        personal=personal,
        chunk_size=config.execution.chunk_size,
      )
      sums.append(test(block_params, personal))
      if adapt is not None:
        adapted.append(test(adapt(global_params, ids), True))
    paths = None if data.client_paths is None else [data.client_paths[k] for k in clients]
    population = data.num_clients if len(clients) < data.num_clients else None
    per_client["client_ids"] = clients
    for prefix, blocks in (("", sums), ("adapted_", adapted if adapt is not None else None)):
      if blocks is None:
        continue
      gathered = _from_every_process(held, blocks, clients)
      summary = client_metrics(gathered, data.sequences, paths, population)
      metrics.update((f"{prefix}{k}", v) for k, v in summary.items())
      per_client[f"{prefix}client_accuracy"] = client_accuracies(gathered)
  if algorithm.client_clusters is not None and data.client_groups is not None:
    from sklearn.metrics import adjusted_rand_score  # here: ~75 MB only clustering runs need

    metrics["cluster_ari"] = float(
      adjusted_rand_score(data.client_groups, np.asarray(algorithm.client_clusters(state)))
    )
  return Evaluation(metrics, per_client)


def client_models(algorithm: Algorithm, state):
  """``models(client_ids) -> [len(client_ids), ...]``: the models those clients use, from
  ``Algorithm.personal_params_of`` (only those rows built) or rows of ``personal_params``;
  None when every client uses the global model."""
  if algorithm.personal_params_of is not None:
    return lambda ids: algorithm.personal_params_of(state, ids)
  if algorithm.personal_params is not None:
    stacked = algorithm.personal_params(state)
    return lambda ids: jax.tree.map(lambda leaf: leaf[ids], stacked)
  return None


def _from_every_process(held: np.ndarray, blocks: list, clients: np.ndarray) -> np.ndarray:
  """``[len(clients), ...]``: the per-client results this process computed for ``held`` (in
  ``blocks``, filler rows after) with every other process's for its own clients, in the order
  of ``clients`` (sorted); with one process, ``held`` is ``clients``."""
  mine = np.concatenate([np.asarray(b) for b in blocks])[: len(held)] if blocks else None
  if jax.process_count() == 1:
    return mine
  from jax.experimental import multihost_utils

  most = int(np.bincount(clients % jax.process_count()).max())
  values = np.zeros((most, 3), np.float32)  # client_test_sums' three columns
  ids = np.full(most, -1, np.int64)
  if mine is not None:
    values[: len(held)], ids[: len(held)] = mine, held
  values = np.asarray(multihost_utils.process_allgather(values)).reshape(-1, 3)
  ids = np.asarray(multihost_utils.process_allgather(ids)).reshape(-1)
  return values[ids >= 0][np.argsort(ids[ids >= 0])]
