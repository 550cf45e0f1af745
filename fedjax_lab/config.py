"""Experiment configuration: frozen dataclasses, validated on construction (before anything is
traced), loadable from JSON or TOML with dotted command-line overrides (``local.epochs=2``)."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import typing
from typing import Any

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (pyproject.toml)
  import tomli as tomllib

from fedjax_lab.algorithms import ALGORITHMS
from fedjax_lab.checks import one_of, require, typed_fields
from fedjax_lab.data.catalog import FEDERATIONS, PARTITIONERS, SOURCE_CHOICES
from fedjax_lab.data.groups import GROUP_SHIFTS
from fedjax_lab.engine.execution import STRATEGIES
from fedjax_lab.engine.precision import COMPUTE_DTYPES
from fedjax_lab.models import CONV_IMPLEMENTATIONS, INITIALIZATIONS, MODELS
from fedjax_lab.ops.accounting import ACCOUNTANTS, PLD_MIN_NOISE_MULTIPLIER, SAMPLINGS
from fedjax_lab.ops.aggregators import AGGREGATORS, COMPRESSORS
from fedjax_lab.ops.attacks import ATTACKS
from fedjax_lab.ops.systems import DeviceModel, read_trace
from fedjax_lab.writers import WRITERS

CLIENT_OPTIMIZERS = ("sgd", "adam", "adamw")
SERVER_OPTIMIZERS = ("sgd", "adam", "yogi", "adagrad")
STRAGGLERS = ("drop", "partial")  # systems.stragglers
WEIGHTINGS = ("num_examples", "uniform")
MAX_LOG_SIGMA = 5.0  # systems.compute_sigma and link_sigma
MAX_CLIENTS = 2**31 - 1  # data.num_clients: client ids are int32 throughout the engine


class Selection:
  """A config section that names registered entries and holds each one's own options
  dataclass, written as a table named after the entry (``algorithm.fedmr.granularity=layer``,
  ``aggregation.krum.byzantine=2``, ``model.mlp.hidden=[100]``, ``data.dirichlet.alpha=0.1``);
  ``None`` options mean the entry's defaults. The tables of entries not selected are parsed,
  validated and dropped, so one base config serves a sweep over entries. ``CHOICES``: for each
  selector field, its registry and the field that holds its options (most sections have one:
  ``(("name", ALGORITHMS, "options"),)``; ``data`` has a source and a partition). Subclasses
  are frozen dataclasses whose options fields default to None; each calls
  ``_select_options()`` in ``__post_init__``."""

  SECTION: typing.ClassVar[str]
  CHOICES: typing.ClassVar[tuple]

  def _select_options(self) -> None:
    for selector, registry, field in self.CHOICES:
      name = getattr(self, selector)
      options = registry.get(name).options  # an unknown name: one line naming the field
      if getattr(self, field) is None:
        object.__setattr__(self, field, options())
      require(
        isinstance(getattr(self, field), options),
        f"{self.SECTION}.{field}",
        f"a {options.__name__} for {self.SECTION}.{selector}={name!r}",
        type(getattr(self, field)).__name__,
      )
      typed_fields(getattr(self, field), f"{self.SECTION}.{name}.")

  @classmethod
  def from_dict(cls, values: dict, prefix: str):
    """From a table of the shared fields and ``<entry>: {options}`` tables (the class
    docstring); any other key is an error naming the allowed ones."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    option_fields = {field for _, _, field in cls.CHOICES}
    shared = [name for name in fields if name not in option_fields]
    kwargs = {}
    for selector, registry, field in cls.CHOICES:
      name = _coerce(f"{prefix}{selector}", str, values.get(selector, fields[selector].default))
      registry.get(name)
      kwargs[field] = None
    for key, value in values.items():
      field = _field_name(prefix, key)
      owners = [(s, r, f) for s, r, f in cls.CHOICES if key in r]
      if key in shared:
        kwargs[key] = _coerce(field, hints[key], value)
      elif owners:
        for selector, registry, options_field in owners:
          parsed = _build(registry.get(key).options, _table(field, value), f"{field}.")
          chosen = values.get(selector, fields[selector].default)
          kwargs[options_field] = parsed if key == chosen else kwargs[options_field]
      else:
        tables = "; ".join(f"a {s} ({', '.join(r)})" for s, r, _ in cls.CHOICES)
        raise ValueError(
          f"{field} is not a config field; allowed: {', '.join(shared)}, or the options table "
          f"of {tables}"
        )
    return cls(**kwargs)

  def to_dict(self) -> dict:
    option_fields = {field for _, _, field in self.CHOICES}
    values = {
      f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in option_fields
    }
    for selector, _, field in self.CHOICES:
      values[getattr(self, selector)] = dataclasses.asdict(getattr(self, field))
    return values


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
  max_client_examples: int = 0  # > 0: keep each client's first examples (dataset order)
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
      not given or self.max_client_examples == 0,
      "data.max_client_examples",
      f"0 for data.source={self.source} (its clients are given)",
      self.max_client_examples,
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


def _cohort_reduced() -> str:
  """The registered methods reduced by ``ClientSetup.cohort_reduce`` alone, comma-separated."""
  return ", ".join(n for n in ALGORITHMS.names() if ALGORITHMS.get(n).cohort_reduced)


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
class AggregationConfig(Selection):
  """How cohort contributions are reduced (``ops.aggregators``): the ``rule`` (registered in
  ``AGGREGATORS``, its own settings in ``options``: ``aggregation.<rule>``, e.g.
  ``aggregation.trimmed_mean.fraction``, ``aggregation.krum.byzantine``), after clipping each
  client's update to ``clip_norm`` (0: no clipping; per layer group with ``clip_per_layer``).
  ``clip_quantile > 0``: adaptive clipping (``ops.aggregators.adaptive_clip_mean``),
  ``clip_norm`` its initial norm, ``clip_learning_rate`` its step, ``clip_count_stddev`` the
  noise on its count under DP."""

  SECTION, CHOICES = "aggregation", (("rule", AGGREGATORS, "options"),)

  rule: str = "mean"
  clip_norm: float = 0.0
  clip_per_layer: bool = False  # each layer group clipped to clip_norm / sqrt(groups)
  clip_quantile: float = 0.0  # > 0: adaptive clipping to this quantile of update norms
  clip_learning_rate: float = 0.2  # adaptive clipping's geometric step
  clip_count_stddev: float = 0.0  # noise std on the unclipped count (0: cohort_size / 20)
  options: Any = None

  def __post_init__(self):
    typed_fields(self, "aggregation.")
    self._select_options()
    require(
      0 <= self.clip_quantile < 1,
      "aggregation.clip_quantile",
      "in [0, 1) (0: a fixed clip norm)",
      self.clip_quantile,
    )
    require(
      self.clip_learning_rate > 0, "aggregation.clip_learning_rate", "> 0", self.clip_learning_rate
    )
    require(
      self.clip_count_stddev >= 0,
      "aggregation.clip_count_stddev",
      ">= 0 (0: cohort_size / 20)",
      self.clip_count_stddev,
    )
    require(self.clip_norm >= 0, "aggregation.clip_norm", ">= 0 (0: no clipping)", self.clip_norm)


@dataclasses.dataclass(frozen=True)
class CompressionConfig(Selection):
  """Update compression (``ops/aggregators/compression.py``, registered in ``COMPRESSORS``):
  ``name`` (``none``, ``qsgd``, ``top_k``, ``random_k``) and its table
  (``compression.qsgd.bits``, ``compression.top_k.fraction``); the uploads' bytes are counted
  as encoded. ``error_feedback``: each client keeps what its compression left out and adds it
  to its next upload (``ops.aggregators.error_feedback``; a residual per client in the state)."""

  SECTION, CHOICES = "compression", (("name", COMPRESSORS, "options"),)

  name: str = "none"
  options: Any = None
  error_feedback: bool = False

  def __post_init__(self):
    typed_fields(self, "compression.")
    self._select_options()
    require(
      self.name != "none" or not self.error_feedback,
      "compression.error_feedback",
      "false with compression.name=none (there is nothing left out to feed back)",
      self.error_feedback,
    )


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """Malicious clients. Model poisoning (``sign_flip``, ``scale``, ``gaussian``, ``alie``;
  ``ops/attacks.py``): each round ``floor(fraction * cohort_size)`` random contributions are
  replaced before aggregation, ``strength`` their factor, noise std or z (``alie``: 0 means
  Baruch et al.'s z_max). Data poisoning (``label_flip``): ``floor(fraction *
  data.num_clients)`` fixed clients train on flipped labels."""

  kind: str = "none"
  fraction: float = 0.0
  strength: float = 0.0

  def __post_init__(self):
    typed_fields(self, "attack.")
    one_of("attack.kind", self.kind, ("none", "label_flip") + ATTACKS)
    require(0 <= self.fraction < 1, "attack.fraction", "in [0, 1)", self.fraction)
    require(self.strength >= 0, "attack.strength", ">= 0", self.strength)
    if self.kind in ("sign_flip", "scale", "gaussian"):
      require(self.strength > 0, "attack.strength", f"> 0 for attack.kind={self.kind}", 0.0)


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
  """Central differential privacy (DP-FedAvg, McMahan et al. 2018): each client's update is
  clipped to ``aggregation.clip_norm`` and Gaussian noise of std ``noise_multiplier *
  clip_norm / cohort_size`` is added to the uniform mean. The (epsilon, ``delta``) spent is
  logged each round as ``privacy_epsilon`` (``ops/accounting.py``). 0 turns it off.
  ``local_noise_multiplier > 0``: local DP, each client adds noise of std ``z_local *
  clip_norm`` to its clipped update itself; ``local_privacy_epsilon`` is one client's
  epsilon after taking part in every round so far (no amplification by sampling)."""

  noise_multiplier: float = 0.0
  delta: float = 1e-5
  local_noise_multiplier: float = 0.0  # > 0: local DP, each client adds N(0, (z C)^2)
  # rdp, or pld (tighter; full participation or cohort_sampling=poisson)
  accountant: str = "rdp"

  def __post_init__(self):
    typed_fields(self, "privacy.")
    one_of("privacy.accountant", self.accountant, ACCOUNTANTS)
    require(self.noise_multiplier >= 0, "privacy.noise_multiplier", ">= 0", self.noise_multiplier)
    require(
      self.local_noise_multiplier >= 0,
      "privacy.local_noise_multiplier",
      ">= 0",
      self.local_noise_multiplier,
    )
    require(0 < self.delta < 1, "privacy.delta", "in (0, 1)", self.delta)
    if self.accountant == "pld" and self.noise_multiplier > 0:
      require(
        self.noise_multiplier >= PLD_MIN_NOISE_MULTIPLIER,
        "privacy.noise_multiplier",
        f">= {PLD_MIN_NOISE_MULTIPLIER} with privacy.accountant=pld (smaller noise cannot be "
        "accounted in reasonable time and memory; use privacy.accountant=rdp)",
        self.noise_multiplier,
      )


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
class SystemsConfig:
  """The clients' devices and the simulated clock (``ops/systems.py``). ``compute_median > 0``
  gives every client a compute speed (examples per second, lognormal with ``compute_sigma``)
  and links (``uplink_mbps`` / ``downlink_mbps`` medians, 0: instant; ``link_sigma``), and
  logs each round's ``simulated_seconds``. A sampled client is available with probability
  ``availability`` and drops mid-round with probability ``dropout``; with ``deadline_s > 0``
  one slower than the deadline is late. ``over_selection = o > 0`` samples
  ``ceil((1 + o) cohort_size)`` clients and counts the ``cohort_size`` first to finish.
  ``availability_trace``: a CSV of daily online windows per client (``ops/systems.py``), read
  at the simulated time of day each round starts (a deadline keeps the clock going).
  ``stragglers``: a client past the deadline is dropped (``drop``) or sends the local steps
  it finished in time (``partial``: methods with ``AlgorithmEntry.cohort_reduced``; FedNova's
  normalized averaging accounts for the unequal steps). Unavailable, dropped, late and
  surplus clients contribute nothing. All off by default (an ideal system)."""

  compute_median: float = 0.0
  compute_sigma: float = 1.0
  uplink_mbps: float = 0.0
  downlink_mbps: float = 0.0
  link_sigma: float = 0.5
  availability: float = 1.0
  dropout: float = 0.0
  deadline_s: float = 0.0
  over_selection: float = 0.0  # sample (1 + this) x cohort_size, count the cohort_size first
  availability_trace: str = ""  # a CSV of daily online windows (ops/systems.py)
  stragglers: str = "drop"  # past the deadline: drop, or send the steps done (partial)

  def __post_init__(self):
    typed_fields(self, "systems.")
    require(
      self.over_selection == 0 or self.compute_median > 0,
      "systems.over_selection",
      "0 unless systems.compute_median > 0 (the first to finish need timed devices)",
      self.over_selection,
    )
    require(self.over_selection >= 0, "systems.over_selection", ">= 0", self.over_selection)
    if self.availability_trace:
      require(
        self.deadline_s > 0,
        "systems.deadline_s",
        "> 0 with systems.availability_trace (rounds must take time while nobody is online)",
        self.deadline_s,
      )
      require(
        pathlib.Path(self.availability_trace).is_file(),
        "systems.availability_trace",
        "an existing CSV file",
        self.availability_trace,
      )
      read_trace(self.availability_trace)  # its format, checked before anything runs
    one_of("systems.stragglers", self.stragglers, STRAGGLERS)
    require(
      self.stragglers == "drop" or self.deadline_s > 0,
      "systems.stragglers",
      "drop unless systems.deadline_s > 0 (partial work is what a straggler did by it)",
      self.stragglers,
    )
    for name in ("compute_median", "uplink_mbps", "downlink_mbps", "deadline_s"):
      value = getattr(self, name)
      require(value >= 0, f"systems.{name}", ">= 0 (0: off)", value)
    for name in ("compute_sigma", "link_sigma"):
      require(
        0 <= getattr(self, name) <= MAX_LOG_SIGMA,
        f"systems.{name}",
        f"in [0, {MAX_LOG_SIGMA}] (a log-normal spread: {MAX_LOG_SIGMA} already puts devices "
        f"e^{MAX_LOG_SIGMA} = {math.exp(MAX_LOG_SIGMA):.0f} times apart at one standard "
        "deviation; beyond it simulated times overflow)",
        getattr(self, name),
      )
    require(0 < self.availability <= 1, "systems.availability", "in (0, 1]", self.availability)
    require(0 <= self.dropout < 1, "systems.dropout", "in [0, 1)", self.dropout)
    require(
      self.deadline_s == 0 or self.compute_median > 0,
      "systems.deadline_s",
      "0 unless systems.compute_median > 0 (a deadline needs timed devices)",
      self.deadline_s,
    )

  @property
  def timed(self) -> bool:
    """Whether rounds take simulated time (``simulated_seconds`` is logged)."""
    return self.compute_median > 0

  @property
  def loses_clients(self) -> bool:
    """Whether some sampled clients may contribute nothing."""
    return (
      self.availability < 1
      or self.dropout > 0
      or self.deadline_s > 0
      or self.over_selection > 0
      or bool(self.availability_trace)
    )

  def sampled(self, cohort_size: int) -> int:
    """Clients sampled a round for a cohort of ``cohort_size`` (more with over-selection)."""
    return math.ceil((1 + self.over_selection) * cohort_size - 1e-9)

  def device_model(self) -> DeviceModel:
    bytes_per_second = lambda mbps: mbps * 1e6 / 8
    return DeviceModel(
      self.compute_median,
      self.compute_sigma,
      bytes_per_second(self.uplink_mbps),
      bytes_per_second(self.downlink_mbps),
      self.link_sigma,
      self.availability,
      self.dropout,
      self.deadline_s,
      read_trace(self.availability_trace) if self.availability_trace else None,
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
    self._check_aggregation()
    self._check_guarantees()
    self._check_sampling()
    self._check_systems()
    self._check_asynchronous()
    self._check_feedback()
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

  def _check_guarantees(self) -> None:
    """DP, clipping, robust rules, secure aggregation and model poisoning act in the setup's
    aggregator: refused for a method whose uploads do not all pass through it
    (``AlgorithmEntry.aggregated_uploads``). An attack must have at least one attacker, and
    ``attack.kind=none`` takes no attack fields."""
    name, aggregation, privacy, attack = (
      self.algorithm.name,
      self.aggregation,
      self.privacy,
      self.attack,
    )
    if not ALGORITHMS.get(name).aggregated_uploads:
      supported = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).aggregated_uploads]
      reason = (
        f"for algorithm.name={name} (its uploads reach the server outside the setup's "
        f"aggregator; methods that support it: {', '.join(supported)})"
      )
      defaults = AggregationConfig()
      for field, value, default in (
        ("privacy.noise_multiplier", privacy.noise_multiplier, 0.0),
        ("privacy.local_noise_multiplier", privacy.local_noise_multiplier, 0.0),
        ("aggregation.rule", aggregation.rule, defaults.rule),
        ("aggregation.clip_norm", aggregation.clip_norm, defaults.clip_norm),
        ("aggregation.clip_quantile", aggregation.clip_quantile, defaults.clip_quantile),
        ("aggregation.clip_per_layer", aggregation.clip_per_layer, defaults.clip_per_layer),
        ("compression.name", self.compression.name, "none"),
      ):
        require(value == default, field, f"{default} {reason}", value)
      require(
        attack.kind not in ATTACKS,
        "attack.kind",
        f"none or label_flip (data poisoning) {reason}",
        attack.kind,
      )
    if attack.kind == "none":
      require(attack.fraction == 0, "attack.fraction", "0 with attack.kind=none", attack.fraction)
      require(attack.strength == 0, "attack.strength", "0 with attack.kind=none", attack.strength)
      return
    label_flip = attack.kind == "label_flip"
    among, count = ("data.num_clients", self.data.num_clients)
    if not label_flip:
      among, count = ("cohort_size", self.contributions)
    require(
      int(attack.fraction * count) >= 1,
      "attack.fraction",
      f">= 1 / {among} = {1 / count:.4g} for attack.kind={attack.kind} (floor(fraction * "
      f"{count}) attackers; fewer is no attack)",
      attack.fraction,
    )

  def _check_systems(self) -> None:
    """Clients lost to availability, dropouts and deadlines train as empty clients: only for
    methods that tolerate them (``any_cohort_size`` or ``keeps_lost_clients``), with the mean,
    and without central DP (its noise is calibrated to the cohort size, not to the clients
    that report)."""
    if not self.systems.loses_clients:
      return
    if self.systems.over_selection > 0:
      sampled = self.systems.sampled(self.cohort_size)
      require(
        sampled <= self.data.num_clients and self.cohort_sampling == "fixed",
        "systems.over_selection",
        f"such that ceil((1 + over_selection) * cohort_size) = {sampled} <= data.num_clients="
        f"{self.data.num_clients}, with cohort_sampling=fixed",
        self.systems.over_selection,
      )
    name = self.algorithm.name
    tolerant = lambda n: ALGORITHMS.get(n).any_cohort_size or ALGORITHMS.get(n).keeps_lost_clients
    require(
      tolerant(name),
      "algorithm.name",
      "a method that can lose clients with systems.availability < 1, systems.dropout > 0, "
      "systems.deadline_s > 0, over-selection or a trace ("
      + ", ".join(n for n in ALGORITHMS.names() if tolerant(n))
      + ")",
      name,
    )
    if self.systems.stragglers == "partial":
      require(
        ALGORITHMS.get(name).cohort_reduced,
        "systems.stragglers",
        f"drop for algorithm.name={name} (partial work needs a method whose local training "
        f"takes a step limit: {_cohort_reduced()})",
        self.systems.stragglers,
      )
    require(
      self.aggregation.rule == "mean",
      "aggregation.rule",
      "mean when systems lose clients (an empty client is a vote for the start model)",
      self.aggregation.rule,
    )
    require(
      self.privacy.noise_multiplier == 0,
      "privacy.noise_multiplier",
      "0 when systems lose clients (the noise is calibrated to the sampled cohort)",
      self.privacy.noise_multiplier,
    )

  def _check_feedback(self) -> None:
    """Error feedback keeps a residual per client, applied by ``ClientSetup.cohort_reduce``
    ahead of the rest of the aggregation: for methods reduced by it alone, fixed-size cohorts
    (one row per distinct client), and no clipping or local noise (they would act on the
    compressed message, not on the update)."""
    if not self.compression.error_feedback:
      return
    name = self.algorithm.name
    require(
      ALGORITHMS.get(name).cohort_reduced,
      "compression.error_feedback",
      f"false for algorithm.name={name} (it needs a method whose uploads ClientSetup."
      f"cohort_reduce reduces: {_cohort_reduced()})",
      True,
    )
    require(
      self.cohort_sampling == "fixed",
      "cohort_sampling",
      "fixed with compression.error_feedback (a residual per distinct client)",
      self.cohort_sampling,
    )
    for field, value in (
      ("aggregation.clip_norm", self.aggregation.clip_norm),
      ("privacy.local_noise_multiplier", self.privacy.local_noise_multiplier),
    ):
      require(
        value == 0,
        field,
        "0 with compression.error_feedback (the residual would escape the clipping)",
        value,
      )

  def _check_asynchronous(self) -> None:
    """Asynchronous methods (``AlgorithmEntry.asynchronous``) need timed devices (results
    arrive in the order of their simulated finish times), take no over-selection (there is no
    round to fill) and no DP noise (the accountant counts one sampled cohort a round; the
    results of a step are not one). The method's options check the cohort size and the
    population (``check_cohort``, ``check_population``)."""
    check_cohort = getattr(self.algorithm.options, "check_cohort", None)
    if check_cohort is not None:
      check_cohort(self.cohort_size)
    name = self.algorithm.name
    if not ALGORITHMS.get(name).asynchronous:
      return
    require(
      self.systems.timed,
      "systems.compute_median",
      f"> 0 for algorithm.name={name} (results arrive in the order of the devices' finish times)",
      self.systems.compute_median,
    )
    require(
      self.systems.over_selection == 0,
      "systems.over_selection",
      f"0 for algorithm.name={name} (a server step takes the first cohort_size results)",
      self.systems.over_selection,
    )
    for field, value in (
      ("privacy.noise_multiplier", self.privacy.noise_multiplier),
      ("privacy.local_noise_multiplier", self.privacy.local_noise_multiplier),
    ):
      require(
        value == 0,
        field,
        f"0 for algorithm.name={name} (the accountant assumes a sampled cohort a round; "
        "asynchronous arrivals are not one)",
        value,
      )
    check_population = getattr(self.algorithm.options, "check_population", None)
    if check_population is not None:
      check_population(self.data.num_clients)

  def _check_aggregation(self) -> None:
    """The robust rules and DP against the cohort size and the weighting."""
    rule, cohort = self.aggregation.rule, self.contributions
    check_cohort = getattr(self.aggregation.options, "check_cohort", None)
    if check_cohort is not None:
      check_cohort(cohort)
    if self.privacy.noise_multiplier > 0:
      require(
        getattr(self.compression.options, "keeps_clipping", True),
        "compression.name",
        "none or top_k with privacy.noise_multiplier > 0 (a compressor that can grow a clipped "
        "update breaks the noise's calibration)",
        self.compression.name,
      )
    if self.aggregation.clip_quantile > 0:
      require(
        self.compression.name == "none",
        "compression.name",
        "none with aggregation.clip_quantile > 0",
        self.compression.name,
      )
      require(
        self.aggregation.clip_norm > 0,
        "aggregation.clip_norm",
        "> 0 with aggregation.clip_quantile > 0 (the initial clip norm)",
        self.aggregation.clip_norm,
      )
      require(rule == "mean", "aggregation.rule", "mean with aggregation.clip_quantile > 0", rule)
    if self.privacy.local_noise_multiplier > 0 or self.aggregation.clip_per_layer:
      require(
        self.aggregation.clip_norm > 0,
        "aggregation.clip_norm",
        "> 0 with privacy.local_noise_multiplier > 0 or aggregation.clip_per_layer",
        self.aggregation.clip_norm,
      )
    if self.privacy.noise_multiplier > 0:
      require(
        self.aggregation.clip_norm > 0,
        "aggregation.clip_norm",
        "> 0 with privacy.noise_multiplier > 0 (it bounds each client's contribution)",
        self.aggregation.clip_norm,
      )
      require(rule == "mean", "aggregation.rule", "mean with privacy.noise_multiplier > 0", rule)
      require(
        self.algorithm.weighting == "uniform",
        "algorithm.weighting",
        "uniform with privacy.noise_multiplier > 0 (example-count weights are unbounded)",
        self.algorithm.weighting,
      )

  def _check_sampling(self) -> None:
    """Poisson cohorts (padded with empty clients, reduced over a fixed denominator) against
    the method, the aggregation and the accountant."""
    if self.cohort_sampling == "poisson":
      name, aggregation = self.algorithm.name, self.aggregation
      require(
        ALGORITHMS.get(name).any_cohort_size,
        "cohort_sampling",
        f"fixed for {name} (poisson needs a method without per-client state: "
        + ", ".join(n for n in ALGORITHMS.names() if ALGORITHMS.get(n).any_cohort_size)
        + ")",
        self.cohort_sampling,
      )
      require(
        aggregation.rule == "mean" and aggregation.clip_quantile == 0,
        "aggregation.rule",
        "mean, without clip_quantile, with cohort_sampling=poisson",
        aggregation.rule,
      )
      require(
        self.algorithm.weighting == "uniform",
        "algorithm.weighting",
        "uniform with cohort_sampling=poisson (the denominator is the expected cohort size)",
        self.algorithm.weighting,
      )
      require(
        self.attack.kind in ("none", "label_flip"),
        "attack.kind",
        "none or label_flip with cohort_sampling=poisson",
        self.attack.kind,
      )
    elif self.privacy.accountant == "pld" and self.privacy.noise_multiplier > 0:
      require(
        self.cohort_size == self.data.num_clients,
        "privacy.accountant",
        "rdp for fixed-size cohorts smaller than data.num_clients (pld needs full "
        "participation or cohort_sampling=poisson)",
        self.privacy.accountant,
      )

  def to_dict(self) -> dict:
    sections = {
      f.name: getattr(self, f.name).to_dict()
      for f in dataclasses.fields(self)
      if isinstance(getattr(self, f.name), Selection)
    }
    return {**dataclasses.asdict(self), **sections}


def _field_name(prefix: str, key) -> str:
  """``prefix + key`` for an error message, the key quoted when it would not print as one line
  (a user's key with a newline or a control character)."""
  key = str(key)
  return prefix + (key if key.isprintable() else repr(key))


def _table(field: str, value) -> dict:
  if not isinstance(value, dict):
    raise ValueError(f"{field} must be a table of fields, got {value!r}")
  return value


def _build(cls, values: dict, prefix: str = ""):
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in values.items():
    field = _field_name(prefix, key)
    if key not in names:
      allowed = ", ".join(sorted(names)) or f"none ({cls.__name__} has no fields)"
      raise ValueError(f"{field} is not a config field; allowed: {allowed}")
    hint = hints[key]
    if isinstance(hint, type) and issubclass(hint, Selection):
      kwargs[key] = hint.from_dict(_table(field, value), f"{field}.")
    elif dataclasses.is_dataclass(hint):
      kwargs[key] = _build(hint, _table(field, value), f"{field}.")
    else:
      kwargs[key] = _coerce(field, hint, value)
  built = cls(**kwargs)
  typed_fields(built, prefix)  # an options table that is not selected is checked too
  return built


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
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
      return str(value)
  elif typing.get_origin(hint) is tuple:  # tuple[int, ...]: a list, or "[200, 200]" / "200,200"
    (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
    if isinstance(value, str):
      text = value.strip().removeprefix("[").removesuffix("]")
      value = [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
      return tuple(_coerce(f"{field}[{i}]", item, v) for i, v in enumerate(value))
    raise ValueError(f"{field} must be a list of {item.__name__} values, got {value!r}")
  raise ValueError(f"{field} must be of type {hint.__name__}, got {value!r}")


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
  return _build(ExperimentConfig, _moved(values))


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
        raise ValueError(f"override {override!r}: {_field_name('', section)} is not a section")
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
