"""fedjax_lab: a JAX-based, purely functional simulator for federated learning on non-IID data."""

from fedjax_lab.build import build_federation
from fedjax_lab.config import ExperimentConfig, load_config
from fedjax_lab.run import RunResult, TrainingDivergedError, run

__all__ = [
  "ExperimentConfig",
  "load_config",
  "run",
  "RunResult",
  "TrainingDivergedError",
  "build_federation",
]
