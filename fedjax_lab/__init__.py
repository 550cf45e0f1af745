"""fedjax_lab: a JAX-based, purely functional simulator for federated learning on non-IID data.

The names below are imported on first use, so ``import fedjax_lab.cli`` (``fedjax-lab --help``)
does not import JAX."""

import importlib

_EXPORTS = {
  "ExperimentConfig": "fedjax_lab.config",
  "load_config": "fedjax_lab.config",
  "run": "fedjax_lab.runner",
  "RunResult": "fedjax_lab.runner",
  "RunInterrupted": "fedjax_lab.run_hooks",
  "TrainingDivergedError": "fedjax_lab.run_hooks",
  "build_federation": "fedjax_lab.build",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'fedjax_lab' has no attribute {name!r}")
  return getattr(importlib.import_module(_EXPORTS[name]), name)
