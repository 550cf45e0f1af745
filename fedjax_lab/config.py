"""Experiment configuration: frozen dataclasses, validated on construction (before anything is
traced), loadable from JSON or TOML with dotted command-line overrides (``local.epochs=2``)."""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import tomllib
import typing

from fedjax_lab.data.groups import GROUP_SHIFTS
from fedjax_lab.data.sources import OFFLINE_SOURCES, TFDS_DATASETS
from fedjax_lab.engine.execution import STRATEGIES
from fedjax_lab.engine.precision import COMPUTE_DTYPES
from fedjax_lab.models import CONV_IMPLEMENTATIONS, MODEL_NAMES
from fedjax_lab.ops.cluster import LINKAGES
from fedjax_lab.ops.influence import INFLUENCE_KINDS

PARTITIONS = ("iid", "dirichlet", "dirichlet_capped", "shards", "quantity_skew", "natural")
PERSONALIZED_CLUSTERING = ("pfedlia", "oracle", "ifca", "cfl")   # need every client each round
ALGORITHMS = ("fedavg", "fedprox", "fedopt", "scaffold", "local", "centralized", "fedmr",
              "fedsnd") + PERSONALIZED_CLUSTERING
PFEDLIA_CLUSTERINGS = ("agglomerative", "spectral", "decentralized")
RECOMBINATION_GRANULARITIES = ("leaf", "layer", "block")
CLIENT_OPTIMIZERS = ("sgd", "adam")
SERVER_OPTIMIZERS = ("sgd", "adam", "yogi", "adagrad")
WEIGHTINGS = ("num_examples", "uniform")


def _require(condition: bool, field: str, allowed: str, value) -> None:
  if not condition:
    raise ValueError(f"{field} must be {allowed}, got {value!r}")


def _one_of(field: str, value, allowed) -> None:
  _require(value in allowed, field, "one of " + ", ".join(map(str, allowed)), value)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the examples come from and how they are split into clients."""
  source: str = "digits"            # an offline source or tfds:<name>
  source_dir: str = ""              # folder of local files (fashion_mnist_idx, shakespeare, tfds)
  coarse_labels: bool = False       # CIFAR-100's 20 super-classes
  num_clients: int = 20
  partition: str = "dirichlet"
  alpha: float = 0.5                # Dirichlet concentration
  min_examples: int = 10            # per client, for Dirichlet partitions
  classes_per_client: int = 2       # shards
  sigma: float = 1.0                # quantity skew (log-normal)
  test_fraction: float = 0.2        # of each client's examples, held out as its own test split
  synthetic_alpha: float = 1.0
  synthetic_beta: float = 1.0
  max_client_examples: int = 0      # > 0: keep each client's first examples (dataset order)
  latent_groups: int = 0            # > 0: clients in this many groups, shifted by group_shift
  group_shift: str = "label_permutation"   # label_permutation | rotation (data/groups.py)
  seed: int = 0

  def __post_init__(self):
    known = OFFLINE_SOURCES + tuple(f"tfds:{n}" for n in TFDS_DATASETS)
    _require(self.source in known or self.source.startswith("tfds:emnist"), "data.source",
             "one of " + ", ".join(known), self.source)
    _require(self.num_clients >= 1, "data.num_clients", ">= 1", self.num_clients)
    _one_of("data.partition", self.partition, PARTITIONS)
    _require(self.alpha > 0 and math.isfinite(self.alpha), "data.alpha", "> 0", self.alpha)
    _require(self.min_examples >= 1, "data.min_examples", ">= 1", self.min_examples)
    _require(self.classes_per_client >= 1, "data.classes_per_client", ">= 1",
             self.classes_per_client)
    _require(self.sigma >= 0, "data.sigma", ">= 0", self.sigma)
    _require(0 <= self.test_fraction < 1, "data.test_fraction", "in [0, 1)", self.test_fraction)
    _require(self.max_client_examples >= 0, "data.max_client_examples", ">= 0 (0: no cap)",
             self.max_client_examples)
    _require(0 <= self.latent_groups <= self.num_clients, "data.latent_groups",
             f"in [0, data.num_clients={self.num_clients}]", self.latent_groups)
    _one_of("data.group_shift", self.group_shift, GROUP_SHIFTS)
    if self.group_shift == "rotation":
      _require(self.latent_groups <= 4, "data.latent_groups", "<= 4 with rotation (90-degree "
               "turns)", self.latent_groups)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  name: str = "mlp"
  conv: str = "xla"                 # xla | im2col: convolutions as matrix products

  def __post_init__(self):
    _one_of("model.name", self.name, MODEL_NAMES)
    _one_of("model.conv", self.conv, CONV_IMPLEMENTATIONS)


@dataclasses.dataclass(frozen=True)
class LocalConfig:
  """Client training: ``epochs`` passes over the client's data, or exactly ``steps`` if > 0."""
  optimizer: str = "sgd"
  learning_rate: float = 0.05
  momentum: float = 0.0
  epochs: int = 1
  steps: int = 0
  batch_size: int = 20

  def __post_init__(self):
    _one_of("local.optimizer", self.optimizer, CLIENT_OPTIMIZERS)
    _require(self.learning_rate > 0, "local.learning_rate", "> 0", self.learning_rate)
    _require(0 <= self.momentum < 1, "local.momentum", "in [0, 1)", self.momentum)
    _require(self.epochs >= 1, "local.epochs", ">= 1", self.epochs)
    _require(self.steps >= 0, "local.steps", ">= 0 (0: use local.epochs)", self.steps)
    _require(self.batch_size >= 1, "local.batch_size", ">= 1", self.batch_size)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  """The server optimizer applied to the negative mean client update (FedOpt)."""
  optimizer: str = "sgd"
  learning_rate: float = 1.0
  momentum: float = 0.0
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-3

  def __post_init__(self):
    _one_of("server.optimizer", self.optimizer, SERVER_OPTIMIZERS)
    _require(self.learning_rate > 0, "server.learning_rate", "> 0", self.learning_rate)
    _require(0 <= self.momentum < 1, "server.momentum", "in [0, 1)", self.momentum)


@dataclasses.dataclass(frozen=True)
class FedMRConfig:
  """FedMR (layer-wise model recombination); the slot count is ``cohort_size``."""
  first_stage_rounds: int = 0       # rounds of unweighted FedAvg before recombination starts
  granularity: str = "leaf"         # leaf (official code) | layer (paper) | block (ablation)
  block_fraction: float = 0.0       # FedMR_Partition(p): leaves per block = ceil(p * leaves)

  def __post_init__(self):
    _require(self.first_stage_rounds >= 0, "algorithm.fedmr.first_stage_rounds", ">= 0",
             self.first_stage_rounds)
    _one_of("algorithm.fedmr.granularity", self.granularity, RECOMBINATION_GRANULARITIES)
    _require(0 <= self.block_fraction <= 1, "algorithm.fedmr.block_fraction", "in [0, 1]",
             self.block_fraction)


@dataclasses.dataclass(frozen=True)
class PFedLIAConfig:
  """pFedLIA: warm-up, lazy-influence phase, clustering, per-cluster FedAvg (algorithms/pfedlia)."""
  warmup_rounds: int = 5            # FedAvg rounds giving the shared start theta0 (0 allowed)
  recluster_every: int = 0          # > 0: a new influence phase every this many rounds
  validation_fraction: float = 0.2  # of each client's training examples, held out for scoring
  influence: str = "loss"           # loss | accuracy | vote
  vote_epsilon: float = 0.0         # > 0: randomized response on votes (eps-local DP)
  clustering: str = "agglomerative" # agglomerative | spectral (central) | decentralized
  linkage: str = "average"
  num_clusters: int = 0             # 0: agglomerative stops at `threshold`; spectral needs > 0
  threshold: float = 0.0            # merge while the linkage similarity is >= this
  neighbours: str = "positive"      # decentralized collaborators: positive | top_k
  top_k: int = 5
  chunk_size: int = 16              # scorers per chunk of the N x N influence matrix

  def __post_init__(self):
    p = "algorithm.pfedlia."
    _require(self.warmup_rounds >= 0, p + "warmup_rounds", ">= 0", self.warmup_rounds)
    _require(self.recluster_every >= 0, p + "recluster_every", ">= 0", self.recluster_every)
    _require(0 < self.validation_fraction < 1, p + "validation_fraction", "in (0, 1)",
             self.validation_fraction)
    _one_of(p + "influence", self.influence, INFLUENCE_KINDS)
    _require(self.vote_epsilon >= 0, p + "vote_epsilon", ">= 0", self.vote_epsilon)
    if self.vote_epsilon > 0:
      _require(self.influence == "vote", p + "vote_epsilon", "0 unless influence='vote'",
               self.vote_epsilon)
    _one_of(p + "clustering", self.clustering, PFEDLIA_CLUSTERINGS)
    _one_of(p + "linkage", self.linkage, LINKAGES)
    _require(self.num_clusters >= 0, p + "num_clusters", ">= 0", self.num_clusters)
    if self.clustering == "spectral":
      _require(self.num_clusters >= 2, p + "num_clusters", ">= 2 for spectral clustering",
               self.num_clusters)
    _one_of(p + "neighbours", self.neighbours, ("positive", "top_k"))
    _require(self.top_k >= 1, p + "top_k", ">= 1", self.top_k)
    _require(self.chunk_size >= 1, p + "chunk_size", ">= 1", self.chunk_size)


@dataclasses.dataclass(frozen=True)
class IFCAConfig:
  """IFCA (Ghosh et al. 2020): k cluster models, each client joins the one of lowest loss."""
  num_clusters: int = 4

  def __post_init__(self):
    _require(self.num_clusters >= 2, "algorithm.ifca.num_clusters", ">= 2", self.num_clusters)


@dataclasses.dataclass(frozen=True)
class CFLConfig:
  """CFL (Sattler et al. 2020): split a cluster in two by the cosine similarity of its clients'
  updates once ``||mean update|| < eps1`` while ``max ||update|| > eps2``. Both scale with the
  learning rate and local steps: the defaults suit the MLP benchmark of experiments/pfedlia
  (Sattler et al.'s 0.4 / 1.6 were for their models); `cfl` logs both norms every round."""
  eps1: float = 0.12
  eps2: float = 0.35

  def __post_init__(self):
    _require(self.eps1 > 0, "algorithm.cfl.eps1", "> 0", self.eps1)
    _require(self.eps2 > 0, "algorithm.cfl.eps2", "> 0", self.eps2)


@dataclasses.dataclass(frozen=True)
class FedSNDConfig:
  """FedSND (algorithms/fedsnd.py). Ablations: ``self_distill_weight = 0`` (noise distillation
  only), ``noise_distill = false`` (self-distillation only)."""
  self_distill_weight: float = 1.0  # lambda of the client's KL term (0: off)
  temperature: float = 2.0          # client-side distillation temperature
  teacher: str = "global"           # global (received model) | previous (own last model)
  noise_distill: bool = True        # the server-side step
  pseudo_per_client: int = 20       # pseudo-samples kept per client
  noise_steps: int = 20             # input-gradient (Adam) steps per round
  noise_learning_rate: float = 0.1
  tv_weight: float = 0.0            # total-variation prior on image pseudo-samples
  adaptive: bool = True             # keep pseudo-samples across rounds (else fresh noise)
  distill_steps: int = 10           # server SGD steps per client model
  distill_learning_rate: float = 0.01
  distill_mode: str = "pairwise"    # pairwise | ensemble
  server_temperature: float = 2.0

  def __post_init__(self):
    p = "algorithm.fedsnd."
    _require(self.self_distill_weight >= 0, p + "self_distill_weight", ">= 0",
             self.self_distill_weight)
    _require(self.temperature > 0, p + "temperature", "> 0", self.temperature)
    _one_of(p + "teacher", self.teacher, ("global", "previous"))
    _require(self.pseudo_per_client >= 1, p + "pseudo_per_client", ">= 1",
             self.pseudo_per_client)
    _require(self.noise_steps >= 1, p + "noise_steps", ">= 1", self.noise_steps)
    _require(self.noise_learning_rate > 0, p + "noise_learning_rate", "> 0",
             self.noise_learning_rate)
    _require(self.tv_weight >= 0, p + "tv_weight", ">= 0", self.tv_weight)
    _require(self.distill_steps >= 1, p + "distill_steps", ">= 1", self.distill_steps)
    _require(self.distill_learning_rate > 0, p + "distill_learning_rate", "> 0",
             self.distill_learning_rate)
    _one_of(p + "distill_mode", self.distill_mode, ("pairwise", "ensemble"))
    _require(self.server_temperature > 0, p + "server_temperature", "> 0",
             self.server_temperature)
    _require(self.noise_distill or self.self_distill_weight > 0, p + "self_distill_weight",
             "> 0 when noise_distill is false (otherwise this is FedAvg)", self.self_distill_weight)


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
  name: str = "fedavg"
  prox_mu: float = 0.0              # FedProx
  weighting: str = "num_examples"   # aggregation weights
  finetune: bool = False            # personalized: evaluate each client's locally trained model
  fedmr: FedMRConfig = FedMRConfig()
  pfedlia: PFedLIAConfig = PFedLIAConfig()
  ifca: IFCAConfig = IFCAConfig()
  cfl: CFLConfig = CFLConfig()
  fedsnd: FedSNDConfig = FedSNDConfig()

  def __post_init__(self):
    _one_of("algorithm.name", self.name, ALGORITHMS)
    _require(self.prox_mu >= 0, "algorithm.prox_mu", ">= 0", self.prox_mu)
    if self.name == "fedprox":
      _require(self.prox_mu > 0, "algorithm.prox_mu", "> 0 for fedprox", self.prox_mu)
    if self.name not in ("fedprox", "fedopt"):
      _require(self.prox_mu == 0, "algorithm.prox_mu", f"0 for {self.name} (use fedprox)",
               self.prox_mu)
    _one_of("algorithm.weighting", self.weighting, WEIGHTINGS)
    if self.finetune:
      _require(self.name in PERSONALIZED_CLUSTERING, "algorithm.finetune",
               f"false for {self.name} (it applies to {', '.join(PERSONALIZED_CLUSTERING)})",
               self.finetune)


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
  """How the cohort is executed. ``auto`` picks per backend and model (docs/architecture.md)."""
  strategy: str = "auto"
  chunk_size: int = 8
  unroll: str = "auto"              # auto | scan | unroll
  devices: int = 1                  # > 1: the cohort axis sharded over this many devices
  compute_dtype: str = "float32"    # float32 | bfloat16 (local forward/backward; fp32 params)

  def __post_init__(self):
    _one_of("execution.strategy", self.strategy, ("auto",) + STRATEGIES)
    _require(self.chunk_size >= 1, "execution.chunk_size", ">= 1", self.chunk_size)
    _one_of("execution.unroll", self.unroll, ("auto", "scan", "unroll"))
    _require(self.devices >= 1, "execution.devices", ">= 1", self.devices)
    if self.devices > 1:
      _require(self.strategy == "vmap", "execution.strategy",
               "vmap when execution.devices > 1 (the vmapped cohort axis is what is sharded)",
               self.strategy)
    _one_of("execution.compute_dtype", self.compute_dtype, COMPUTE_DTYPES)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  local: LocalConfig = LocalConfig()
  server: ServerConfig = ServerConfig()
  algorithm: AlgorithmConfig = AlgorithmConfig()
  execution: ExecutionConfig = ExecutionConfig()
  rounds: int = 20
  cohort_size: int = 5
  seed: int = 0
  eval_every: int = 5
  checkpoint_every: int = 10        # 0 disables checkpoints
  out_dir: str = "runs/default"

  def __post_init__(self):
    _require(self.rounds >= 1, "rounds", ">= 1", self.rounds)
    _require(self.cohort_size >= 1, "cohort_size", ">= 1", self.cohort_size)
    _require(self.cohort_size <= self.data.num_clients, "cohort_size",
             f"<= data.num_clients={self.data.num_clients}", self.cohort_size)
    _require(self.eval_every >= 1, "eval_every", ">= 1", self.eval_every)
    _require(self.cohort_size % self.execution.devices == 0, "cohort_size",
             f"a multiple of execution.devices={self.execution.devices} (equal shards)",
             self.cohort_size)
    _require(self.checkpoint_every >= 0, "checkpoint_every", ">= 0", self.checkpoint_every)
    if self.algorithm.name in PERSONALIZED_CLUSTERING:
      _require(self.cohort_size == self.data.num_clients, "cohort_size",
               f"data.num_clients={self.data.num_clients} for {self.algorithm.name} (every "
               "client takes part in every round)", self.cohort_size)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _build(cls, values: dict, prefix: str = ""):
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in values.items():
    field = f"{prefix}{key}"
    if key not in names:
      raise ValueError(f"{field} is not a config field; allowed: {', '.join(sorted(names))}")
    hint = hints[key]
    if dataclasses.is_dataclass(hint):
      if not isinstance(value, dict):
        raise ValueError(f"{field} must be a table of fields, got {value!r}")
      kwargs[key] = _build(hint, value, f"{field}.")
    else:
      kwargs[key] = _coerce(field, hint, value)
  return cls(**kwargs)


def _coerce(field: str, hint, value):
  if hint is bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
    if isinstance(value, bool):
      return value
  elif hint is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
      return int(value)
  elif hint is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if isinstance(value, str):
      try:
        return float(value)
      except ValueError:
        pass
  elif hint is str:
    return str(value)
  raise ValueError(f"{field} must be of type {hint.__name__}, got {value!r}")


def config_from_dict(values: dict) -> ExperimentConfig:
  """Build and validate from nested dicts (unknown fields are errors)."""
  return _build(ExperimentConfig, values)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
  """``["local.epochs=2", "data.alpha=0.1"]`` applied to a nested dict (a new dict)."""
  values = json.loads(json.dumps(values))
  for override in overrides:
    if "=" not in override:
      raise ValueError(f"override {override!r} must look like section.field=value")
    path, raw = override.split("=", 1)
    *sections, leaf = path.strip().split(".")
    node = values
    for section in sections:
      node = node.setdefault(section, {})
      if not isinstance(node, dict):
        raise ValueError(f"override {override!r}: {section} is not a section")
    node[leaf] = raw
  return values


def load_config(path: str | None = None, overrides: list[str] = ()) -> ExperimentConfig:
  """Read a ``.json`` or ``.toml`` config (or start from defaults), then apply overrides."""
  values: dict = {}
  if path:
    text = pathlib.Path(path).read_text()
    values = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
  return config_from_dict(apply_overrides(values, list(overrides)))
