"""Shared fixtures: one small real federation (scikit-learn digits) reused across tests, so
the suite compiles few distinct programs."""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
import pytest

from fedjax_lab.build import build_federation
from fedjax_lab.config import DataConfig
from fedjax_lab.data import FederatedData, partition, sources
from fedjax_lab.data.catalog import DirichletOptions

# The tests compile far more than they compute (tiny federations, a few rounds), and on a clean
# clone (CI) every program compiles cold. LLVM's -O0 for XLA:CPU's generated code cuts that
# time (measured on 2 cores, cold cache: the WorldLM tests 59 -> 44 s; four experiment-script
# runs and the im2col model tests 113 -> 74 s). XLA's HLO passes are unchanged; the code
# generator's choices can move results in the last bits (a chaotic run diverged at round 10
# instead of 12), so no test may depend on bits a compiler setting decides. XLA:CPU's older
# loop emitters instead of its fusion emitters compile these small programs faster again
# (measured on 2 cores, cold cache, 27 guarantee and equivalence tests: 116 -> 88 s; the
# WorldLM runs unchanged). JAX reads XLA_FLAGS when it starts its backend, after this module
# is imported; subprocesses inherit it.
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

# JAX's persistent compilation cache, shared by the xdist workers and kept between runs (git
# ignores it). Measured on 2 cores (make test-fast, 329 tests): 113 s without it, 108 s with a
# cold cache (tests that build the same program in new closures hit it), 40 s warm. Cache hits
# only remove compilations, so the tests that count them (test_compilation.py) stay exact.
jax.config.update(
  "jax_compilation_cache_dir", str(pathlib.Path(__file__).resolve().parents[1] / ".jax_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def digits_dataset() -> sources.Dataset:
  return sources.digits(seed=0)


@pytest.fixture(scope="session")
def small_federation() -> FederatedData:
  """8 digits clients, Dirichlet(0.5) label skew, uneven sizes (so padding matters)."""
  return build_federation(
    DataConfig(
      source="digits",
      num_clients=8,
      partition="dirichlet",
      partition_options=DirichletOptions(alpha=0.5, min_examples=15),
    )
  )


@pytest.fixture(scope="session")
def tiny_federation(digits_dataset) -> FederatedData:
  """6 clients of 3-25 examples each (flattened 8x8 digits): fast engine-equivalence runs."""
  rng = np.random.default_rng(1)
  sizes = [25, 3, 17, 9, 25, 12]
  order = rng.permutation(len(digits_dataset.train_y))
  cuts = np.cumsum(sizes)
  clients = [np.sort(part) for part in np.split(order[: cuts[-1]], cuts[:-1])]
  train, test = partition.train_test_split(clients, 0.2, seed=2)
  return FederatedData.from_indices(digits_dataset, train, test)
