"""No recompilation after the first round, whatever the cohort."""

import jax
import numpy as np
import optax
import pytest
from jax import monitoring

from fedjax_lab.algorithms import ClientSetup, compiled_round
from fedjax_lab.algorithms.fedgen import FedGenConfig, fedgen
from fedjax_lab.algorithms.fedmr import fedmr
from fedjax_lab.algorithms.fedopt import fedopt
from fedjax_lab.algorithms.scaffold import scaffold
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model

_compiles = []
monitoring.register_event_duration_secs_listener(
  lambda name, *args, **kwargs: (
    _compiles.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
  )
)


@pytest.mark.parametrize(
  "name,strategy",
  [
    ("scaffold", "vmap"),
    ("scaffold", "loop"),
    ("fedavg", "chunked"),
    ("fedavg", "loop"),
    ("fedmr", "loop"),  # its round runs op by op: a lax.cond there compiled every round
    ("fedgen", "loop"),  # and so did the generator's step loop
  ],
)
def test_rounds_after_the_first_do_not_compile(tiny_federation, name, strategy):
  setup = ClientSetup(
    build_model("mlp", 10),
    tiny_federation.train_x[0, :1],
    optax.sgd(0.1),
    LocalSchedule(4, tiny_federation.max_examples),
    Executor(strategy, 2),
    tiny_federation.num_clients,
  )
  algorithm = {
    "scaffold": lambda: scaffold(setup, client_learning_rate=0.1),
    "fedavg": lambda: fedopt(setup, optax.sgd(1.0)),
    "fedmr": lambda: fedmr(setup, 3, first_stage_rounds=1),
    "fedgen": lambda: fedgen(setup, FedGenConfig(generator_steps=2)),
  }[name]()
  round_fn = compiled_round(algorithm, setup.executor)
  state = algorithm.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  for r in range(5):
    if r == 2:
      before = len(_compiles)
    ids = np.sort(rng.choice(tiny_federation.num_clients, 3, replace=False))
    state, metrics = round_fn(state, tiny_federation.cohort(ids), jax.random.key(r))
    float(metrics["train_loss"])
  assert len(_compiles) == before, f"{len(_compiles) - before} compilations after round 2"
