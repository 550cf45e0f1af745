"""Extending the package from outside it: a method defined in a file of its own registers
itself and runs end to end through the CLI, and so do an aggregation rule and a model with
options of their own, a data source and a partitioner; registries name what is allowed; every
registered algorithm's factory documents its arguments and result."""

import inspect
import json
import pathlib

import pytest

from fedjax_lab import algorithms
from fedjax_lab.algorithms import ALGORITHMS
from fedjax_lab.cli import main
from fedjax_lab.registry import Registry

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "writing_a_method.md"


def _guide_method() -> str:
  """The one-file method of docs/writing_a_method.md, verbatim."""
  text = GUIDE.read_text()
  start = text.index("```python\n# damped_avg.py") + len("```python\n")
  return text[start : text.index("```", start)]


@pytest.fixture()
def plugin(tmp_path):
  path = tmp_path / "damped_plugin.py"
  path.write_text(_guide_method())
  yield str(path)
  ALGORITHMS.unregister("damped_avg")


@pytest.mark.slow  # a whole run (make test-fast skips it)
def test_a_method_outside_the_package_runs_through_the_cli(plugin, tmp_path, capsys):
  out_dir = tmp_path / "run"
  code = main(
    [
      "--no-progress",
      "--plugin",
      plugin,
      "data.source=digits",
      "data.num_clients=6",
      "data.dirichlet.min_examples=15",
      "cohort_size=3",
      "rounds=4",
      "eval_every=2",
      "checkpoint_every=2",
      "algorithm.name=damped_avg",
      "algorithm.damped_avg.step=0.7",
      f"out_dir={out_dir}",
    ]
  )
  assert code == 0, capsys.readouterr().err
  stored = json.loads((out_dir / "config.json").read_text())
  assert stored["algorithm"] == {
    "name": "damped_avg",
    "weighting": "num_examples",
    "damped_avg": {"step": 0.7},
  }
  rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == [1, 2, 3, 4] and rows[-1]["global_accuracy"] > 0.2
  # The stored config resumes the run (with the plugin loaded again).
  assert (
    main(
      [
        "--no-progress",
        "--plugin",
        plugin,
        "--config",
        str(out_dir / "config.json"),
        "rounds=6",
        "--resume",
      ]
    )
    == 0
  )


def test_a_plugin_method_validates_its_own_options(plugin, capsys):
  code = main(
    [
      "--plugin",
      plugin,
      "algorithm.name=damped_avg",
      "algorithm.damped_avg.step=2",
      "--print-config",
    ]
  )
  assert code == 2
  assert "algorithm.damped_avg.step must be in (0, 1], got 2.0" in capsys.readouterr().err
  assert (
    main(["--plugin", plugin, "algorithm.name=damped_avg", "algorithm.damped_avg.steps=2"]) == 2
  )
  assert "algorithm.damped_avg.steps is not a config field; allowed: step" in (
    capsys.readouterr().err
  )


# One file registering one entry of every other kind: a rule and a model with options (config
# tables ``aggregation.cut_mean``, ``model.tiny_mlp``), a source and a partitioner.
OTHER_KINDS = """
import dataclasses

import numpy as np

from fedjax_lab.checks import require
from fedjax_lab.data.catalog import PARTITIONERS, SOURCES, DataEntry
from fedjax_lab.data.sources import Dataset
from fedjax_lab.models import MODELS, ModelEntry
from fedjax_lab.models.vision import MLP
from fedjax_lab.ops.aggregators import AGGREGATORS, AggregatorEntry, trimmed_mean


@dataclasses.dataclass(frozen=True)
class CutOptions:
  cut: float = 0.1

  def __post_init__(self):
    require(0 <= self.cut < 0.5, "aggregation.cut_mean.cut", "in [0, 0.5)", self.cut)


@dataclasses.dataclass(frozen=True)
class TinyOptions:
  width: int = 16


@dataclasses.dataclass(frozen=True)
class BlobsOptions:
  spread: float = 1.0


def blobs(data, options):  # three Gaussian blobs in 2-D
  rng = np.random.default_rng(data.seed)
  centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]], np.float32)
  noise = lambda n: options.spread * rng.normal(size=(n, 2))
  make = lambda n: (lambda y: ((centers[y] + noise(n)).astype(np.float32), y))(
    rng.integers(0, 3, n).astype(np.int32)
  )
  (train_x, train_y), (test_x, test_y) = make(300), make(90)
  return Dataset(train_x, train_y, test_x, test_y, 3)


AGGREGATORS.register("cut_mean", AggregatorEntry(lambda o: trimmed_mean(o.cut), CutOptions))
MODELS.register(
  "tiny_mlp", ModelEntry(lambda n, width: MLP(n, hidden=(width,)), False, options=TinyOptions)
)
SOURCES.register("blobs", DataEntry(blobs, BlobsOptions))
PARTITIONERS.register(
  "round_robin", DataEntry(lambda dataset, data, options: [
    np.arange(k, len(dataset.train_y), data.num_clients) for k in range(data.num_clients)
  ])
)
"""


@pytest.fixture()
def other_kinds(tmp_path):
  from fedjax_lab.data.catalog import PARTITIONERS, SOURCES
  from fedjax_lab.models import MODELS
  from fedjax_lab.ops.aggregators import AGGREGATORS

  path = tmp_path / "other_kinds.py"
  path.write_text(OTHER_KINDS)
  yield str(path)
  AGGREGATORS.unregister("cut_mean")
  MODELS.unregister("tiny_mlp")
  SOURCES.unregister("blobs")
  PARTITIONERS.unregister("round_robin")


@pytest.mark.slow  # a whole run (make test-fast skips it)
def test_a_rule_model_source_and_partitioner_outside_the_package_run_through_the_cli(
  other_kinds, tmp_path, capsys
):
  out_dir = tmp_path / "run"
  settings = [
    "data.source=blobs",
    "data.blobs.spread=0.8",
    "data.partition=round_robin",
    "data.num_clients=6",
    "data.test_fraction=0",
    "model.name=tiny_mlp",
    "model.tiny_mlp.width=8",
    "aggregation.rule=cut_mean",
    "aggregation.cut_mean.cut=0.2",
    "cohort_size=5",
    "rounds=4",
    "eval_every=2",
    "checkpoint_every=2",
    "local.learning_rate=0.1",
    f"out_dir={out_dir}",
  ]
  assert main(["--no-progress", "--plugin", other_kinds, *settings]) == 0, capsys.readouterr().err
  stored = json.loads((out_dir / "config.json").read_text())
  assert stored["aggregation"]["cut_mean"] == {"cut": 0.2}
  assert stored["model"]["tiny_mlp"] == {"width": 8}
  assert stored["data"]["blobs"] == {"spread": 0.8} and stored["data"]["round_robin"] == {}
  rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["global_accuracy"] > 0.8  # three well-separated blobs
  resumed = ["--no-progress", "--plugin", other_kinds, "--config", str(out_dir / "config.json")]
  assert main([*resumed, "rounds=6", "--resume"]) == 0, capsys.readouterr().err
  assert main(["--plugin", other_kinds, *settings[:-1], "aggregation.cut_mean.cut=0.6"]) == 2
  assert "aggregation.cut_mean.cut must be in [0, 0.5), got 0.6" in capsys.readouterr().err


def test_a_missing_plugin_is_one_clear_line(tmp_path, capsys):
  assert main(["--plugin", str(tmp_path / "nowhere.py"), "--print-config"]) == 2
  assert "nowhere.py: no such file" in capsys.readouterr().err


def test_registry_names_the_field_and_refuses_duplicates():
  registry = Registry("thing.name")
  registry.register("a", 1)
  with pytest.raises(ValueError, match="thing.name must be one of a, got 'b'"):
    registry.get("b")
  with pytest.raises(ValueError, match="already registered"):
    registry.register("a", 2)
  registry.register("a", 3, replace=True)
  assert registry.get("a") == 3 and list(registry) == ["a"]


FACTORIES = sorted(
  {
    (module.__name__, name)
    for module in vars(algorithms).values()
    if inspect.ismodule(module) and module.__name__.startswith("fedjax_lab.algorithms.")
    for name, fn in vars(module).items()
    if inspect.isfunction(fn)
    and fn.__module__ == module.__name__
    and not name.startswith("_")
    and inspect.signature(fn).return_annotation in ("Algorithm",)
  }
)


def test_every_algorithm_module_has_a_documented_factory():
  assert len(FACTORIES) >= 9, FACTORIES


@pytest.mark.parametrize("module,name", FACTORIES)
def test_public_algorithm_factories_document_args_and_returns(module, name):
  doc = inspect.getdoc(getattr(__import__(module, fromlist=[name]), name)) or ""
  assert "Args:" in doc and "Returns:" in doc, f"{module}.{name}"
