"""Config parsing under arbitrary input: any override string, any JSON value, is a config or
one ``ValueError`` naming a field; never another exception (a traceback for the user)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_lab.config import ExperimentConfig, apply_overrides, config_from_dict, load_config


def _fields(cls, prefix=""):
  for field in dataclasses.fields(cls):
    if dataclasses.is_dataclass(field.type) or field.name in ("data", "model", "local"):
      continue
    yield prefix + field.name


SECTIONS = {
  name: list(_fields(type(getattr(ExperimentConfig(), name)), f"{name}."))
  for name in ("data", "model", "local", "server", "aggregation", "execution")
}
KNOWN = [path for paths in SECTIONS.values() for path in paths] + [
  "rounds",
  "cohort_size",
  "seed",
  "eval_every",
  "checkpoint_every",
  "out_dir",
  "algorithm.name",
  "algorithm.weighting",
  "algorithm.fedmr.granularity",
  "algorithm.pfedlia.num_clusters",
]
VALUES = st.one_of(
  st.text(max_size=12),
  st.sampled_from(["inf", "-inf", "nan", "1e400", "-1", "0", "2.5", "true", "", "1e-300"]),
  st.integers(-(10**20), 10**20).map(str),
  st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
OVERRIDES = st.one_of(
  st.tuples(st.sampled_from(KNOWN), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
  st.text(max_size=30),
)


@given(st.lists(OVERRIDES, max_size=4))
@settings(max_examples=300, deadline=None)
def test_random_overrides_give_a_config_or_one_value_error(overrides):
  try:
    config = load_config(None, overrides)
  except ValueError as error:
    assert str(error) and "\n" not in str(error)
    return
  assert isinstance(config, ExperimentConfig)


JSON = st.recursive(
  st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
  lambda children: (
    st.lists(children, max_size=3)
    | st.dictionaries(
      st.sampled_from(["data", "local", "rounds", "alpha", "x"]), children, max_size=3
    )
  ),
  max_leaves=8,
)


@given(st.dictionaries(st.sampled_from(list(SECTIONS) + ["rounds", "algorithm", "seed"]), JSON))
@settings(max_examples=200, deadline=None)
def test_random_config_tables_give_a_config_or_one_value_error(values):
  try:
    config = config_from_dict(apply_overrides(values, []))
  except ValueError:
    return
  assert isinstance(config, ExperimentConfig)


def test_a_key_with_a_newline_is_named_on_one_line():
  """Found by the random-override test: the unknown key was echoed raw, over two lines."""
  for overrides in (["0\n0="], ["a\nb.c=1"], ["algorithm.x\ty=1"]):
    try:
      load_config(None, overrides)
    except ValueError as error:
      assert "\n" not in str(error) and "is not a" in str(error)
    else:
      raise AssertionError(f"{overrides!r} was accepted")


def test_model_and_rule_options_are_tables_beside_their_registered_entries():
  import json

  import jax

  from fedjax_lab.models import build_model

  config = load_config(
    None,
    [
      "model.mlp.hidden=[32, 16]",
      "aggregation.rule=multi_krum",
      "aggregation.multi_krum.selected=2",
      "aggregation.trimmed_mean.fraction=0.3",  # another rule's table: checked, then dropped
      "cohort_size=5",
    ],
  )
  assert config.model.options.hidden == (32, 16)
  assert config.aggregation.options.selected == 2
  assert "trimmed_mean" not in config.to_dict()["aggregation"]
  assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
  params = build_model("mlp", 3, options=config.model.options).init(
    jax.random.key(0), jax.numpy.zeros((1, 4))
  )
  assert [p["kernel"].shape for p in params.values()] == [(4, 32), (32, 16), (16, 3)]
  assert load_config(None, ["model.mlp.hidden=[]"]).model.options.hidden == ()
  old = {"aggregation": {"rule": "krum", "byzantine": 1, "iterations": 3}, "cohort_size": 5}
  assert config_from_dict(old).aggregation.options.byzantine == 1  # earlier flat names read


# The refusal table: a bad value names its field and what is allowed (pure: no run).
@pytest.mark.parametrize(
  "overrides,message",
  [
    (["data.dirichlet.alpha=0"], "data.dirichlet.alpha must be > 0"),
    (["data.dirichlet.alpha=-0.5"], "data.dirichlet.alpha must be > 0"),
    (["data.alpha=0"], "data.dirichlet.alpha must be > 0"),  # the name before the move
    (["data.source=cifar11"], "data.source must be one of digits"),
    (["model.name=resnet999"], "model.name must be one of mlp"),
    (["cohort_size=30", "data.num_clients=20"], "cohort_size must be <= data.num_clients=20"),
    (["local.batch_size=0"], "local.batch_size must be >= 1"),
    (["local.epochs=two"], "local.epochs must be of type int"),
    (["data.nclients=3"], "data.nclients is not a config field"),
    (["algorithm.name=fedprox", "algorithm.fedprox.mu=0"], "algorithm.fedprox.mu must be > 0"),
    (
      ["algorithm.prox_mu=0.1"],
      "algorithm.prox_mu is not a config field; allowed: name, weighting",
    ),
    (["algorithm.name=fedmr", "algorithm.fedprox.mu=0"], "algorithm.fedprox.mu must be > 0"),
    (["algorithm.name=fedavgg"], "algorithm.name must be one of fedavg, fedprox"),
    (["aggregation.rule=bulyan"], "aggregation.rule must be one of mean, median, trimmed_mean"),
    (["cohort_sampling=poisson", "algorithm.name=scaffold"], "cohort_sampling must be fixed"),
    (["cohort_sampling=every"], "cohort_sampling must be one of fixed, poisson"),
    (
      ["privacy.accountant=pld", "privacy.noise_multiplier=1", "aggregation.clip_norm=1"]
      + ["algorithm.weighting=uniform"],
      "privacy.accountant must be rdp for fixed-size cohorts",
    ),
    (
      ["eval_finetune_epochs=1", "data.test_fraction=0"],
      "data.test_fraction must be > 0 with eval_finetune_epochs",
    ),
    (
      ["eval_finetune_epochs=1", "algorithm.name=centralized"],
      "eval_finetune_epochs must be 0 for centralized",
    ),
  ],
)
def test_bad_config_names_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    load_config(None, overrides)
