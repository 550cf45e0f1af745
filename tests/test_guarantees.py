"""Privacy and robustness hold for every registered method or are refused (issue 28).

Each test loops over ``ALGORITHMS``, so a method registered later is covered without editing
this file: a method that does not declare ``aggregated_uploads`` must be refused, in one line
naming the field, before anything is built; one that declares it must show the mechanism's
effect on a real run (noise changes the parameters, an attack changes the result) and log an
epsilon only where noise was applied."""

from __future__ import annotations

import functools
import pathlib
import re

import jax
import numpy as np
import pytest

from fedjax_lab import run
from fedjax_lab.algorithms import ALGORITHMS
from fedjax_lab.config import load_config

BASE = [
  "data.source=digits",
  "data.num_clients=6",
  "data.dirichlet.min_examples=15",
  "cohort_size=6",  # every client each round: the methods that need it run too
  "rounds=1",
  "eval_every=1",
  "checkpoint_every=0",
  "local.batch_size=16",
  "algorithm.weighting=uniform",
]
SETTINGS = {
  "clean": [],
  "central_dp": ["privacy.noise_multiplier=1.0", "aggregation.clip_norm=1.0"],
  "local_dp": ["privacy.local_noise_multiplier=0.5", "aggregation.clip_norm=1.0"],
  "attack": ["attack.kind=sign_flip", "attack.fraction=0.34", "attack.strength=4"],
  "median": ["aggregation.rule=median"],
  "median_attacked": [
    "aggregation.rule=median",
    "attack.kind=sign_flip",
    "attack.fraction=0.34",
    "attack.strength=4",
  ],
}
# The field each protected setting is refused on, for a method without aggregated uploads.
REFUSED_FIELD = {
  "central_dp": "privacy.noise_multiplier",
  "local_dp": "privacy.local_noise_multiplier",
  "attack": "attack.kind",
  "median": "aggregation.rule",
  "median_attacked": "aggregation.rule",
}


# Asynchronous methods need timed devices; with as many in flight as a step takes, the first
# round fills the slots and the second steps on what arrived. FedAsync's mixing rate is small so
# that no one result outweighs the rest under the weighted median (at alpha 0.6 the last
# arrival holds most of the weight, and the median is that result, attacked or not).
ASYNCHRONOUS = ["systems.compute_median=20", "rounds=2"]


def _config(name: str, setting: str, tmp_path):
  overrides = BASE + [f"algorithm.name={name}", f"out_dir={tmp_path}/{name}-{setting}"]
  if ALGORITHMS.get(name).asynchronous:
    overrides += [*ASYNCHRONOUS, f"algorithm.{name}.concurrency=6"]
  if name == "fedasync":
    overrides.append("algorithm.fedasync.alpha=0.1")
  if name == "fedbn":  # its personal part: the normalization layers
    overrides.append("model.mlp.normalization=layer")
  return load_config(None, overrides + SETTINGS[setting])


@functools.cache
def _outcome(name: str, setting: str, folder: str):
  """``(leaves of the final state, last metrics row)`` of a tiny run (computed once), or None
  when the config is refused (in one line)."""
  try:
    config = _config(name, setting, pathlib.Path(folder))
  except ValueError as error:
    assert "\n" not in str(error)
    return None
  result = run(config, progress=False)
  return jax.tree.leaves(result.state), result.metrics[-1]


def _differ(leaves_a, leaves_b) -> bool:
  return any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(leaves_a, leaves_b))


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory):
  return str(tmp_path_factory.mktemp("guarantees"))


@pytest.mark.parametrize("setting", sorted(REFUSED_FIELD))
def test_a_method_whose_uploads_bypass_the_aggregator_is_refused(setting, tmp_path):
  refused = [n for n in ALGORITHMS.names() if not ALGORITHMS.get(n).aggregated_uploads]
  assert {"oracle", "ifca", "cfl", "fedmr", "local", "feddf", "fedgen", "fedsnd"} <= set(refused)
  for name in refused:
    with pytest.raises(ValueError) as error:
      _config(name, setting, tmp_path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(REFUSED_FIELD[setting]), message
    assert f"algorithm.name={name}" in message and "fedavg" in message


@pytest.mark.slow
@pytest.mark.parametrize(
  "name", [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).aggregated_uploads]
)
def test_every_protection_acts_on_a_method_that_declares_aggregated_uploads(name, runs_folder):
  """Each setting is refused or has its effect: noise changes the parameters and logs its
  epsilon (and only its own), an attack changes the median's result."""
  clean, clean_row = _outcome(name, "clean", runs_folder)
  assert "privacy_epsilon" not in clean_row and "local_privacy_epsilon" not in clean_row
  for setting, epsilon in (
    ("central_dp", "privacy_epsilon"),
    ("local_dp", "local_privacy_epsilon"),
  ):
    outcome = _outcome(name, setting, runs_folder)
    if outcome is None:
      continue
    noisy, row = outcome
    assert _differ(clean, noisy), f"{name}: {setting} left the parameters unchanged"
    assert np.isfinite(row[epsilon]) and row[epsilon] > 0
    other = {"privacy_epsilon", "local_privacy_epsilon"} - {epsilon}
    assert not other & set(row), f"{name}: {setting} logged {other & set(row)}"
  # The attack reaches the method's uploads: it moves even the median. It wraps whichever rule
  # aggregates (build._attacked), so the mean's case adds nothing here (tests/test_attacks.py).
  attacked = _outcome(name, "median_attacked", runs_folder)
  if attacked is not None:
    before = _outcome(name, "median", runs_folder)
    assert _differ(before[0], attacked[0]), f"{name}: the attack had no effect on the median"


def test_the_issues_oracle_command_is_refused_in_one_line(capsys):
  from fedjax_lab.cli import main

  code = main(
    [
      "data.source=digits",
      "data.num_clients=10",
      "data.latent_groups=2",
      "algorithm.name=oracle",
      "privacy.noise_multiplier=1.0",
      "aggregation.clip_norm=1.0",
      "algorithm.weighting=uniform",
      "rounds=3",
      "cohort_size=10",
      "eval_every=3",
    ]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1
  assert err.startswith("fedjax-lab: ValueError: privacy.noise_multiplier must be 0.0 for")


@pytest.mark.parametrize(
  "overrides, field",
  [
    (
      ["attack.kind=sign_flip", "attack.strength=1", "attack.fraction=0.1", "cohort_size=5"],
      "attack.fraction must be >= 1 / cohort_size = 0.2",
    ),
    (
      ["attack.kind=label_flip", "attack.fraction=0.05", "data.num_clients=10"],
      "attack.fraction must be >= 1 / data.num_clients = 0.1",
    ),
    (
      ["attack.kind=alie", "attack.fraction=0.3", "algorithm.name=centralized"],
      "attack.fraction must be >= 1 / cohort_size = 1",
    ),
    (["attack.fraction=0.2"], "attack.fraction must be 0 with attack.kind=none"),
    (["attack.strength=2"], "attack.strength must be 0 with attack.kind=none"),
    (
      ["aggregation.rule=krum", "aggregation.krum.byzantine=2", "cohort_size=6"],
      "cohort_size must be >= 2 * aggregation.krum.byzantine + 3 = 7",
    ),
    (
      [
        "privacy.accountant=pld",
        "privacy.noise_multiplier=0.03",
        "aggregation.clip_norm=1",
        "cohort_size=10",
        "data.num_clients=10",
        "algorithm.weighting=uniform",
      ],
      "privacy.noise_multiplier must be >= 0.5 with privacy.accountant=pld",
    ),
  ],
)
def test_an_attack_without_attackers_and_unsound_settings_are_refused(overrides, field):
  with pytest.raises(ValueError, match=re.escape(field)):
    load_config(None, ["data.source=digits", "data.num_clients=10", *overrides])


def test_centralized_dp_noise_is_scaled_to_its_one_contribution():
  """The pooled client is the only contribution: its noise std is z C, not z C / cohort_size
  (which added z / cohort_size of noise while the accountant was told z)."""
  from fedjax_lab.build import build_aggregator

  config = load_config(
    None,
    [
      "algorithm.name=centralized",
      "cohort_size=5",
      "privacy.noise_multiplier=2.0",
      "aggregation.clip_norm=0.5",
      "algorithm.weighting=uniform",
    ],
  )
  assert config.contributions == 1
  aggregator = build_aggregator(config)
  template = {"w": np.zeros(20000, np.float32)}
  value, _ = aggregator.aggregate(
    {"w": np.zeros((1, 20000), np.float32)},
    np.ones(1),
    template,
    aggregator.init(template),
    jax.random.key(0),
  )
  assert np.std(np.asarray(value["w"])) == pytest.approx(2.0 * 0.5, rel=0.03)


def test_a_state_that_would_not_fit_is_refused_before_compiling(tmp_path, monkeypatch):
  """SCAFFOLD keeps a control variate per client: its state grows with the federation. With the
  memory reported as 64 KiB, the run is refused in one line giving the state's size, before any
  round (no metrics written)."""
  from fedjax_lab import build

  monkeypatch.setattr(build, "memory_limit", lambda: (64 * 1024, "host memory"))
  config = load_config(None, [*BASE, "algorithm.name=scaffold", f"out_dir={tmp_path}"])
  with pytest.raises(ValueError) as error:
    run(config, progress=False)
  message = str(error.value)
  assert message.startswith("data.num_clients=6: algorithm.name=scaffold would keep ")
  assert "of the 0.1 MiB of host memory" in message and "\n" not in message
  assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize(
  "overrides, cause",
  [
    (["data.num_clients=12", "cohort_size=4", "algorithm.name=fedbuff",
      "algorithm.fedbuff.concurrency=8", "systems.compute_median=20"],
     "algorithm.fedbuff.concurrency=8"),
    (["data.num_clients=12", "cohort_size=4", "compression.name=top_k",
      "compression.error_feedback=true"], "data.num_clients=12"),
  ],
)  # fmt: skip
def test_a_state_too_large_names_the_setting_that_sizes_it(tmp_path, monkeypatch, overrides, cause):
  # Issue 46, finding 16: the line blamed data.num_clients and FedAvg where FedBuff's
  # concurrency or error feedback's residuals were what did not fit.
  from fedjax_lab import build

  monkeypatch.setattr(build, "memory_limit", lambda: (64 * 1024, "host memory"))
  config = load_config(None, [*BASE, *overrides, f"out_dir={tmp_path}"])
  with pytest.raises(ValueError) as error:
    run(config, progress=False)
  message = str(error.value)
  assert message.startswith(f"{cause}: ") and f"a row per {cause})" in message, message
  assert "most of it is " in message and "\n" not in message
