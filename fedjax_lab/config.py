"""Experiment configuration: frozen dataclasses, validated on construction (before anything is
traced), loadable from JSON or TOML with dotted command-line overrides (``local.epochs=2``)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (pyproject.toml)
  import tomli as tomllib

from fedjax_lab.algorithms import ALGORITHMS
from fedjax_lab.checks import one_of, require, typed_fields
from fedjax_lab.config_parsing import Selection, build, field_name
from fedjax_lab.data.catalog import FEDERATIONS, PARTITIONERS, SOURCE_CHOICES
from fedjax_lab.data.groups import GROUP_SHIFTS
from fedjax_lab.engine.execution import STRATEGIES
from fedjax_lab.engine.precision import COMPUTE_DTYPES
from fedjax_lab.features import RULES
from fedjax_lab.features.aggregation import AggregationConfig
from fedjax_lab.features.attacks import AttackConfig
from fedjax_lab.features.compression import CompressionConfig
from fedjax_lab.features.privacy import PrivacyConfig
from fedjax_lab.features.systems import SystemsConfig
from fedjax_lab.models import CONV_IMPLEMENTATIONS, INITIALIZATIONS, MODELS
from fedjax_lab.ops.accounting import SAMPLINGS
from fedjax_lab.writers import WRITERS

CLIENT_OPTIMIZERS = ("sgd", "adam", "adamw")
SERVER_OPTIMIZERS = ("sgd", "adam", "yogi", "adagrad")
WEIGHTINGS = ("num_examples", "uniform")
MAX_CLIENTS = 2**31 - 1  # data.num_clients: client ids are int32 throughout the engine


@dataclasses.dataclass(frozen=True)
class DataConfig(Selection):
  """Where the examples come from (``source``, registered in ``data.catalog``: its own
  settings ``source_options``, the table ``data.<source>``, e.g. ``data.synthetic.alpha``) and
  how they are split into clients (``partition``, its ``partition_options``:
  ``data.dirichlet.alpha``, ``data.shards.classes_per_client``); the fields below are shared."""

  SECTION = "data"
  CHOICES = (
    ("source", SOURCE_CHOICES, "source_options"),
    ("partition", PARTITIONERS, "partition_options"),
  )

  source: str = "digits"  # an offline source or tfds:<name>
  source_dir: str = ""  # folder of local files (fashion_mnist_idx, shakespeare, tfds)
  coarse_labels: bool = False  # CIFAR-100's 20 super-classes
  num_clients: int = 20
  partition: str = "dirichlet"
  test_fraction: float = 0.2  # of each client's examples, held out as its own test split
  # > 0: keep each client's first examples (dataset order; of a given federation's train split)
  max_client_examples: int = 0
  latent_groups: int = 0  # > 0: clients in this many groups, shifted by group_shift
  group_shift: str = "label_permutation"  # label_permutation | rotation (data/groups.py)
  sequence_length: int = 64  # text sources: bytes per window
  max_client_bytes: int = 32768  # text sources: each client's bytes are cut here
  seed: int = 0
  source_options: Any = None
  partition_options: Any = None

  def __post_init__(self):
    typed_fields(self, "data.")
    require(self.seed >= 0, "data.seed", ">= 0", self.seed)
    self._select_options()
    given = self.source in FEDERATIONS
    require(
      not given or self.partition == "natural",
      "data.partition",
      f"'natural' for data.source={self.source} (its clients are given)",
      self.partition,
    )
    require(
      1 <= self.num_clients <= MAX_CLIENTS,
      "data.num_clients",
      f"in [1, {MAX_CLIENTS}] (client ids are int32)",
      self.num_clients,
    )
    require(
      self.source != "tfds_text" or bool(getattr(self.source_options, "spec", "")),
      "data.tfds_text.spec",
      "a JSON file of groups and TFDS datasets with data.source='tfds_text'",
      getattr(self.source_options, "spec", ""),
    )
    require(self.sequence_length >= 1, "data.sequence_length", ">= 1", self.sequence_length)
    require(
      self.max_client_bytes > self.sequence_length,
      "data.max_client_bytes",
      "> data.sequence_length",
      self.max_client_bytes,
    )
    require(0 <= self.test_fraction < 1, "data.test_fraction", "in [0, 1)", self.test_fraction)
    require(
      self.max_client_examples >= 0,
      "data.max_client_examples",
      ">= 0 (0: no cap)",
      self.max_client_examples,
    )
    require(
      0 <= self.latent_groups <= self.num_clients,
      "data.latent_groups",
      f"in [0, data.num_clients={self.num_clients}]",
      self.latent_groups,
    )
    one_of("data.group_shift", self.group_shift, GROUP_SHIFTS)
    if self.group_shift == "rotation":
      require(
        self.latent_groups <= 4,
        "data.latent_groups",
        "<= 4 with rotation (90-degree turns)",
        self.latent_groups,
      )


@dataclasses.dataclass(frozen=True)
class ModelConfig(Selection):
  """The model (``name``, registered in ``models.MODELS``), how it computes, and ``options``:
  the model's own settings, ``model.<name>`` (``model.mlp.hidden=[100]``)."""

  SECTION, CHOICES = "model", (("name", MODELS, "options"),)

  name: str = "mlp"
  conv: str = "auto"  # auto | xla | im2col (matrix products) | explicit_vjp (models/im2col.py)
  initialization: str = "flax"  # flax | torch (PyTorch's defaults; models/initialization.py)
  options: Any = None

  def __post_init__(self):
    typed_fields(self, "model.")
    self._select_options()
    one_of("model.conv", self.conv, ("auto",) + CONV_IMPLEMENTATIONS)
    one_of("model.initialization", self.initialization, INITIALIZATIONS)


@dataclasses.dataclass(frozen=True)
class LocalConfig:
  """Client training: ``epochs`` passes over the client's data, or exactly ``steps`` if > 0."""

  optimizer: str = "sgd"
  learning_rate: float = 0.05
  momentum: float = 0.0
  epochs: int = 1
  steps: int = 0
  batch_size: int = 20
  weight_decay: float = 0.0  # adamw's decoupled weight decay

  def __post_init__(self):
    typed_fields(self, "local.")
    one_of("local.optimizer", self.optimizer, CLIENT_OPTIMIZERS)
    require(self.learning_rate > 0, "local.learning_rate", "> 0", self.learning_rate)
    require(0 <= self.momentum < 1, "local.momentum", "in [0, 1)", self.momentum)
    require(self.epochs >= 1, "local.epochs", ">= 1", self.epochs)
    require(self.steps >= 0, "local.steps", ">= 0 (0: use local.epochs)", self.steps)
    require(self.batch_size >= 1, "local.batch_size", ">= 1", self.batch_size)
    require(self.weight_decay >= 0, "local.weight_decay", ">= 0", self.weight_decay)


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
    typed_fields(self, "server.")
    one_of("server.optimizer", self.optimizer, SERVER_OPTIMIZERS)
    require(self.learning_rate > 0, "server.learning_rate", "> 0", self.learning_rate)
    require(0 <= self.momentum < 1, "server.momentum", "in [0, 1)", self.momentum)


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig(Selection):
  """The method (``name``, registered in ``algorithms.ALGORITHMS``), the fields every method
  shares, and ``options``: the method's own config dataclass, written ``algorithm.<name>`` in a
  config file (``algorithm.fedmr.granularity=layer``). ``options=None`` means its defaults."""

  SECTION, CHOICES = "algorithm", (("name", ALGORITHMS, "options"),)

  name: str = "fedavg"
  weighting: str = "num_examples"  # aggregation weights
  options: Any = None

  def __post_init__(self):
    typed_fields(self, "algorithm.")
    self._select_options()
    one_of("algorithm.weighting", self.weighting, WEIGHTINGS)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
  """Where each round's metrics go beside ``metrics.jsonl``/``.csv`` (always written, the
  source of truth): the registered writers named in ``writers`` (``fedjax_lab.writers``:
  ``tensorboard``, ``mlflow``, ``wandb``, or a plugin's); ``[]`` writes none."""

  writers: tuple[str, ...] = ("tensorboard",)

  def __post_init__(self):
    typed_fields(self, "logging.")
    for name in self.writers:
      WRITERS.get(name)  # an unknown name: one line naming the field and the writers
    require(
      len(set(self.writers)) == len(self.writers),
      "logging.writers",
      "names without repeats",
      list(self.writers),
    )


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
  """How the cohort is executed. ``auto`` picks per backend and model (docs/architecture.md)."""

  strategy: str = "auto"
  chunk_size: int = 8
  threads: int = 0  # loop strategy: calls run at once (0: auto)
  clients_per_call: int = 0  # loop strategy: clients vmapped in one call (0: auto)
  unroll: str = "auto"  # auto (= scan) | scan (rolled, own step counts) | unroll (static)
  devices: int = 1  # > 1: the cohort axis sharded over this many devices
  compute_dtype: str = "float32"  # float32 | bfloat16 (local forward/backward; fp32 params)

  def __post_init__(self):
    typed_fields(self, "execution.")
    one_of("execution.strategy", self.strategy, ("auto",) + STRATEGIES)
    require(self.chunk_size >= 1, "execution.chunk_size", ">= 1", self.chunk_size)
    require(self.threads >= 0, "execution.threads", ">= 0 (0: auto)", self.threads)
    require(
      self.clients_per_call >= 0,
      "execution.clients_per_call",
      ">= 0 (0: auto)",
      self.clients_per_call,
    )
    one_of("execution.unroll", self.unroll, ("auto", "scan", "unroll"))
    require(self.devices >= 1, "execution.devices", ">= 1", self.devices)
    if self.devices > 1:
      require(
        self.strategy == "vmap",
        "execution.strategy",
        "vmap when execution.devices > 1 (the vmapped cohort axis is what is sharded)",
        self.strategy,
      )
    one_of("execution.compute_dtype", self.compute_dtype, COMPUTE_DTYPES)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  local: LocalConfig = LocalConfig()
  server: ServerConfig = ServerConfig()
  algorithm: AlgorithmConfig = AlgorithmConfig()
  aggregation: AggregationConfig = AggregationConfig()
  compression: CompressionConfig = CompressionConfig()
  privacy: PrivacyConfig = PrivacyConfig()
  attack: AttackConfig = AttackConfig()
  execution: ExecutionConfig = ExecutionConfig()
  systems: SystemsConfig = SystemsConfig()
  logging: LoggingConfig = LoggingConfig()
  rounds: int = 20
  cohort_size: int = 5
  # fixed: exactly cohort_size clients a round; poisson: each client joins with probability
  # cohort_size / data.num_clients (DP-FedAvg's sampling; round_step.cohort_ids)
  cohort_sampling: str = "fixed"
  seed: int = 0
  eval_every: int = 5
  # > 0: also evaluate each client's copy of the global model after this many epochs of local
  # training on its own data (local adaptation), as the adapted_client_* metrics
  eval_finetune_epochs: int = 0
  # > 0: test clients' own splits on this many clients, drawn once from the seed (the same at
  # every evaluation), and report the sampling error (client_accuracy_sem); 0: every client
  eval_clients: int = 0
  # > 0: the global model's test set is this many of the global test examples, drawn once from
  # the seed (Reddi et al. evaluate StackOverflow on 10,000 of its 16.6 million); 0: all
  eval_global_examples: int = 0
  checkpoint_every: int = 10  # 0 disables checkpoints
  out_dir: str = "runs/default"

  def __post_init__(self):
    typed_fields(self, "")
    require(self.rounds >= 1, "rounds", ">= 1", self.rounds)
    require(self.seed >= 0, "seed", ">= 0", self.seed)
    require(bool(self.out_dir.strip()), "out_dir", "a folder path", self.out_dir)
    require(self.cohort_size >= 1, "cohort_size", ">= 1", self.cohort_size)
    require(
      self.cohort_size <= self.data.num_clients,
      "cohort_size",
      f"<= data.num_clients={self.data.num_clients}",
      self.cohort_size,
    )
    require(self.eval_every >= 1, "eval_every", ">= 1", self.eval_every)
    require(
      self.eval_global_examples >= 0, "eval_global_examples", ">= 0", self.eval_global_examples
    )
    require(
      self.eval_finetune_epochs >= 0, "eval_finetune_epochs", ">= 0", self.eval_finetune_epochs
    )
    require(
      0 <= self.eval_clients <= self.data.num_clients,
      "eval_clients",
      f"in [0, data.num_clients={self.data.num_clients}] (0: every client)",
      self.eval_clients,
    )
    if self.eval_finetune_epochs > 0:
      require(
        self.data.test_fraction > 0,
        "data.test_fraction",
        "> 0 with eval_finetune_epochs (adapted models are tested on the clients' own splits)",
        self.data.test_fraction,
      )
      require(
        not ALGORITHMS.get(self.algorithm.name).pooled,
        "eval_finetune_epochs",
        f"0 for {self.algorithm.name} (it trains on pooled data, not on clients)",
        self.eval_finetune_epochs,
      )
    require(
      self.cohort_size % self.execution.devices == 0,
      "cohort_size",
      f"a multiple of execution.devices={self.execution.devices} (equal shards)",
      self.cohort_size,
    )
    require(self.checkpoint_every >= 0, "checkpoint_every", ">= 0", self.checkpoint_every)
    one_of("cohort_sampling", self.cohort_sampling, SAMPLINGS)
    for rules in RULES:  # each feature's requirements of the method and the other settings
      rules(self)
    if ALGORITHMS.get(self.algorithm.name).every_client_each_round:
      require(
        self.cohort_size == self.data.num_clients,
        "cohort_size",
        f"data.num_clients={self.data.num_clients} for {self.algorithm.name} (every "
        "client takes part in every round)",
        self.cohort_size,
      )

  @property
  def contributions(self) -> int:
    """Contributions aggregated a round: ``cohort_size`` (1 for a ``pooled`` method, whose
    one client holds the federation)."""
    return 1 if ALGORITHMS.get(self.algorithm.name).pooled else self.cohort_size

  def to_dict(self) -> dict:
    sections = {
      f.name: getattr(self, f.name).to_dict()
      for f in dataclasses.fields(self)
      if isinstance(getattr(self, f.name), Selection)
    }
    return {**dataclasses.asdict(self), **sections}


# Fields that moved into an entry's options table: old name -> the tables that took it. A config
# (or a run folder's config.json, written before the move) that still names the old field is
# read as if it named the new ones, so no earlier run becomes unreadable or unresumable.
MOVED_FIELDS = {
  ("aggregation", "trim_fraction"): [("trimmed_mean", "fraction")],
  ("aggregation", "byzantine"): [("krum", "byzantine"), ("multi_krum", "byzantine")],
  ("aggregation", "krum_selected"): [("multi_krum", "selected")],
  ("aggregation", "iterations"): [
    ("geometric_median", "iterations"),
    ("centered_clip", "iterations"),
  ],
  ("aggregation", "clip_radius"): [("centered_clip", "radius")],
  ("aggregation", "secure_scale_bits"): [("secure_mean", "scale_bits")],
  ("aggregation", "secure_dropout"): [("secure_mean", "dropout")],
  ("data", "alpha"): [("dirichlet", "alpha"), ("dirichlet_capped", "alpha")],
  ("data", "min_examples"): [("dirichlet", "min_examples"), ("dirichlet_capped", "min_examples")],
  ("data", "classes_per_client"): [("shards", "classes_per_client")],
  ("data", "sigma"): [("quantity_skew", "sigma")],
  ("data", "synthetic_alpha"): [("synthetic", "alpha"), ("synthetic_clients", "alpha")],
  ("data", "synthetic_beta"): [("synthetic", "beta"), ("synthetic_clients", "beta")],
  ("data", "text_spec"): [("tfds_text", "spec")],
}


def _moved(values: dict) -> dict:
  """``values`` with every field of ``MOVED_FIELDS`` moved to its new tables (a value the new
  table already holds wins)."""
  values = json.loads(json.dumps(values))
  for (section, old), targets in MOVED_FIELDS.items():
    table = values.get(section)
    if isinstance(table, dict) and old in table:
      value = table.pop(old)
      for entry, field in targets:
        if isinstance(table.setdefault(entry, {}), dict):
          table[entry].setdefault(field, value)
  return values


def config_from_dict(values: dict) -> ExperimentConfig:
  """Build and validate from nested dicts (unknown fields are errors; ``MOVED_FIELDS`` read
  under their new names)."""
  return build(ExperimentConfig, _moved(values))


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
        raise ValueError(f"override {override!r}: {field_name('', section)} is not a section")
    node[leaf] = raw
  return values


def load_config(path: str | None = None, overrides: list[str] = ()) -> ExperimentConfig:
  """Read a ``.json`` or ``.toml`` config (or start from defaults), then apply overrides."""
  values: dict = {}
  if path:
    values = read_config_file(pathlib.Path(path))
  return config_from_dict(apply_overrides(values, list(overrides)))


def read_config_file(path: pathlib.Path) -> dict:
  """The nested table of a ``.json`` or ``.toml`` file; ``ValueError`` naming the file (and the
  line) when it cannot be read as one."""
  if not path.is_file():
    raise ValueError(f"--config {path}: no such file")
  try:
    text = path.read_text()
    values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
  except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    raise ValueError(f"--config {path}: not valid {kind}: {error}") from None
  if not isinstance(values, dict):
    raise ValueError(
      f"--config {path}: must hold a table of sections and fields, got a {type(values).__name__}"
    )
  return values
