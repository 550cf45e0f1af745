"""Attacks (ops/attacks.py, data/poisoning.py) change what they claim, and the robust rules
withstand the model-poisoning ones where the mean does not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lab.config import load_config
from fedjax_lab.ops import attacks

pytestmark = pytest.mark.slow  # trains every rule under attack (make test-fast skips it)

UPDATES = jnp.asarray(np.random.default_rng(0).normal(size=(8, 40)), jnp.float32)
MALICIOUS = jnp.asarray([True, False, False, True, False, False, False, False])


@pytest.mark.parametrize("kind", attacks.ATTACKS)
def test_each_attack_replaces_only_the_malicious_rows_as_claimed(kind):
  poisoned = np.asarray(attacks.poison(kind, UPDATES, MALICIOUS, 3.0, jax.random.key(1)))
  honest = np.asarray(UPDATES)[~np.asarray(MALICIOUS)]
  np.testing.assert_array_equal(poisoned[~np.asarray(MALICIOUS)], honest)
  bad = poisoned[np.asarray(MALICIOUS)]
  if kind == "sign_flip":
    np.testing.assert_allclose(bad, -3.0 * np.asarray(UPDATES)[np.asarray(MALICIOUS)], rtol=1e-6)
  elif kind == "scale":
    np.testing.assert_allclose(bad, 3.0 * np.asarray(UPDATES)[np.asarray(MALICIOUS)], rtol=1e-6)
  elif kind == "gaussian":
    assert bad.std() == pytest.approx(3.0, rel=0.2) and abs(bad.mean()) < 1.2  # 80 draws
  else:  # every attacker sends mu - z sigma of the honest rows
    expected = honest.mean(0) - 3.0 * honest.std(0)
    np.testing.assert_allclose(bad, np.stack([expected, expected]), rtol=1e-5, atol=1e-6)


def test_alie_z_is_baruchs():
  # K = 50, M = 12: s = 26 - 12 = 14 supporters needed, z = Phi^-1(36 / 50)
  assert attacks.alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)
  # called while a round is traced (the aggregator computes it from the cohort's static size)
  assert float(jax.jit(lambda x: x * attacks.alie_z(50, 12))(1.0)) == pytest.approx(
    0.5828, abs=1e-3
  )
  assert int(attacks.malicious_rows(jax.random.key(0), 10, 0.3).sum()) == 3


def test_label_flipping_poisons_only_the_chosen_clients_training_labels():
  from fedjax_lab.build import build_federation
  from fedjax_lab.data import poisoning

  federation = build_federation(load_config(None, ["data.num_clients=10"]).data)
  chosen = poisoning.malicious_clients(10, 0.3, seed=0)
  flipped = poisoning.flip_labels(federation, chosen)
  assert len(chosen) == 3
  for client in range(10):
    n = federation.train_num_examples[client]
    before, after = federation.train_y[client, :n], flipped.train_y[client, :n]
    expected = 9 - before if client in chosen else before
    np.testing.assert_array_equal(after, expected)
  np.testing.assert_array_equal(flipped.test_y, federation.test_y)


@pytest.fixture(scope="module")
def attacked_runs(tmp_path_factory):
  """FedAvg on 10 digits clients, all in each round, 30% sign-flipping attackers (x3)."""
  from fedjax_lab.runner import run

  base = [
    "data.source=digits",
    "data.num_clients=10",
    "cohort_size=10",
    "rounds=12",
    "eval_every=12",
    "checkpoint_every=0",
    "local.learning_rate=0.1",
    "aggregation.krum.byzantine=3",
    "aggregation.multi_krum.byzantine=3",
    "aggregation.trimmed_mean.fraction=0.3",
  ]
  attack = ["attack.kind=sign_flip", "attack.fraction=0.3", "attack.strength=3"]
  settings = {
    "clean": ["aggregation.rule=mean"],
    "mean": ["aggregation.rule=mean", *attack],
    "median": ["aggregation.rule=median", *attack],
    "trimmed_mean": ["aggregation.rule=trimmed_mean", *attack],
    "krum": ["aggregation.rule=krum", *attack],
    "multi_krum": ["aggregation.rule=multi_krum", "aggregation.multi_krum.selected=4", *attack],
    "geometric_median": ["aggregation.rule=geometric_median", *attack],
  }
  return {
    name: run(
      load_config(None, base + extra + [f"out_dir={tmp_path_factory.mktemp(name)}"]),
      progress=False,
    ).metrics[-1]["global_accuracy"]
    for name, extra in settings.items()
  }


def test_sign_flipping_breaks_the_mean_and_not_the_robust_rules(attacked_runs):
  """The mean collapses; each robust rule keeps most of the clean accuracy (on non-IID clients
  it converges more slowly than the clean mean, so not all of it after 12 rounds). Krum keeps
  one client's model a round, and on non-IID clients learns slowest of them."""
  assert attacked_runs["mean"] < attacked_runs["clean"] - 0.5
  for rule in ("median", "trimmed_mean", "krum", "multi_krum", "geometric_median"):
    assert attacked_runs[rule] > attacked_runs["mean"] + 0.4, (rule, attacked_runs)
  for rule in ("median", "trimmed_mean", "multi_krum", "geometric_median"):
    assert attacked_runs[rule] > attacked_runs["clean"] - 0.25, (rule, attacked_runs)


def test_attack_settings_are_checked():
  with pytest.raises(ValueError, match="attack.strength must be > 0 for attack.kind=scale"):
    load_config(None, ["attack.kind=scale"])
  with pytest.raises(ValueError, match="attack.kind must be one of"):
    load_config(None, ["attack.kind=backdoor"])
