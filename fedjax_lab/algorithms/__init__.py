"""Federated algorithms, one module each, all following the ``Algorithm`` contract."""
from __future__ import annotations

import optax

from fedjax_lab.algorithms.base import Algorithm, ClientSetup
from fedjax_lab.algorithms.cfl import cfl
from fedjax_lab.algorithms.clustered import oracle
from fedjax_lab.algorithms.fedmr import fedmr
from fedjax_lab.algorithms.fedopt import fedopt
from fedjax_lab.algorithms.fedsnd import fedsnd
from fedjax_lab.algorithms.ifca import ifca
from fedjax_lab.algorithms.local_only import local_only
from fedjax_lab.algorithms.pfedlia import pfedlia
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


def build_algorithm(config, setup: ClientSetup, client_groups=None) -> Algorithm:
  """The algorithm named by ``config.algorithm`` (an ``ExperimentConfig``).

  ``centralized`` is FedAvg on a federation of one client holding all training data: the
  runner pools the data, so here it is plain FedAvg. ``oracle`` needs ``client_groups``, the
  federation's true latent groups.
  """
  name = config.algorithm.name
  options = config.algorithm
  if name == "fedsnd":
    return fedsnd(setup, options.fedsnd, weighting=options.weighting)
  if name == "pfedlia":
    return pfedlia(setup, options.pfedlia, weighting=options.weighting, finetune=options.finetune)
  if name == "oracle":
    if client_groups is None:
      raise ValueError("algorithm.name='oracle' needs a federation with known client groups "
                       "(data.latent_groups > 0, or Shakespeare with data.partition='natural')")
    return oracle(setup, client_groups, weighting=options.weighting, finetune=options.finetune)
  if name == "ifca":
    return ifca(setup, options.ifca.num_clusters, weighting=options.weighting,
                finetune=options.finetune)
  if name == "cfl":
    return cfl(setup, eps1=options.cfl.eps1, eps2=options.cfl.eps2, weighting=options.weighting,
               finetune=options.finetune)
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
