"""Federated algorithms, one module each, all following the ``Algorithm`` contract."""
from __future__ import annotations

import optax

from fedjax_lab.algorithms.base import Algorithm, ClientSetup
from fedjax_lab.algorithms.fedmr import fedmr
from fedjax_lab.algorithms.fedopt import fedopt
from fedjax_lab.algorithms.local_only import local_only
from fedjax_lab.algorithms.scaffold import scaffold


def client_optimizer(name: str, learning_rate: float, momentum: float):
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=momentum or None)
  return optax.adam(learning_rate)


def server_optimizer(name: str, learning_rate: float, momentum: float, b1: float, b2: float,
                     eps: float):
  """FedAvg: sgd(1.0); FedAvgM: sgd with momentum; FedAdam/FedYogi/FedAdagrad (Reddi et al.)."""
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=momentum or None)
  if name == "adam":
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "yogi":
    return optax.yogi(learning_rate, b1=b1, b2=b2, eps=eps)
  return optax.adagrad(learning_rate, eps=eps)


def build_algorithm(config, setup: ClientSetup) -> Algorithm:
  """The algorithm named by ``config.algorithm`` (an ``ExperimentConfig``).

  ``centralized`` is FedAvg on a federation of one client holding all training data: the
  runner pools the data, so here it is plain FedAvg.
  """
  name = config.algorithm.name
  if name == "scaffold":
    return scaffold(setup, client_learning_rate=config.local.learning_rate,
                    server_learning_rate=config.server.learning_rate,
                    weighting=config.algorithm.weighting)
  if name == "local":
    return local_only(setup)
  if name == "fedmr":
    options = config.algorithm.fedmr
    return fedmr(setup, config.cohort_size, first_stage_rounds=options.first_stage_rounds,
                 granularity=options.granularity, block_fraction=options.block_fraction)
  s = config.server
  return fedopt(setup, server_optimizer(s.optimizer, s.learning_rate, s.momentum, s.b1, s.b2,
                                        s.eps),
                prox_mu=config.algorithm.prox_mu, weighting=config.algorithm.weighting)
