"""Robust aggregation rules (ops/robust.py) against NumPy references and their breakdown
behaviour; central DP (clipping + Gaussian noise) and its accountant (ops/accounting.py)."""

from __future__ import annotations

import dataclasses
import itertools

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import pld, rdp

from fedjax_lab.config import load_config
from fedjax_lab.ops import accounting, aggregators, robust
from fedjax_lab.ops.aggregators import (
  AGGREGATORS,
  centered_clip,
  chain,
  clip_update_norm,
  gaussian_noise,
  mean,
)

RNG = np.random.default_rng(0)


def test_trimmed_mean_matches_numpy():
  values = RNG.normal(size=(9, 4, 3)).astype(np.float32)
  weights = RNG.uniform(0.5, 2, 9).astype(np.float32)
  got = np.asarray(robust.trimmed_mean(jnp.asarray(values), jnp.asarray(weights), 2))
  for i, j in itertools.product(range(4), range(3)):
    order = np.argsort(values[:, i, j], kind="stable")[2:-2]
    expected = np.average(values[order, i, j], weights=weights[order])
    np.testing.assert_allclose(got[i, j], expected, rtol=1e-5)


def _krum_reference(rows, byzantine, selected):
  n = len(rows)
  scores = []
  for i in range(n):
    distances = sorted(np.sum((rows[i] - rows[j]) ** 2) for j in range(n) if j != i)
    scores.append(sum(distances[: n - byzantine - 2]))
  chosen = np.argsort(scores, kind="stable")[:selected]
  return rows[chosen].mean(0)


@pytest.mark.parametrize("selected", [1, 3])
def test_multi_krum_matches_numpy(selected):
  rows = RNG.normal(size=(8, 6)).astype(np.float32)
  got = robust.multi_krum(jnp.asarray(rows), jnp.ones(8), byzantine=2, selected=selected)
  np.testing.assert_allclose(got, _krum_reference(rows, 2, selected), rtol=1e-5, atol=1e-6)


def test_geometric_median_minimizes_the_sum_of_distances():
  rows = RNG.normal(size=(7, 5)).astype(np.float64)
  weights = RNG.uniform(0.5, 2, 7)
  z = np.asarray(robust.geometric_median(jnp.asarray(rows), jnp.asarray(weights), 200))
  cost = lambda point: np.sum(weights * np.linalg.norm(rows - point, axis=1))
  for direction in np.eye(5):  # no small step improves it
    assert cost(z) <= cost(z + 1e-3 * direction) and cost(z) <= cost(z - 1e-3 * direction)


def test_centered_clip_matches_a_plain_loop():
  rows = RNG.normal(size=(6, 4)).astype(np.float32)
  weights = RNG.uniform(0.5, 2, 6).astype(np.float32)
  center = np.zeros(4, np.float32)
  v = center.copy()
  for _ in range(3):
    steps = []
    for x in rows:
      offset = x - v
      steps.append(offset * min(1.0, 0.5 / np.linalg.norm(offset)))
    v = v + np.average(np.stack(steps), axis=0, weights=weights)
  got = robust.centered_clip(jnp.asarray(rows), jnp.asarray(weights), jnp.asarray(center), 0.5, 3)
  np.testing.assert_allclose(got, v, rtol=1e-5)


@pytest.mark.parametrize(
  "rule", ["median", "trimmed_mean", "krum", "multi_krum", "geometric_median"]
)
def test_robust_rules_ignore_a_minority_of_far_outliers(rule):
  """Fewer than half the rows (3 of 10) placed 1e6 away: the robust rules stay near the honest
  clients; the mean does not."""
  from fedjax_lab.config import AggregationConfig
  from fedjax_lab.ops.aggregators.reducers import KrumOptions, MultiKrumOptions, TrimmedMeanOptions

  honest = RNG.normal(size=(7, 20)).astype(np.float32)
  stacked = {"w": jnp.asarray(np.concatenate([honest, np.full((3, 20), 1e6, np.float32)]))}
  options = {
    "trimmed_mean": TrimmedMeanOptions(fraction=0.3),
    "krum": KrumOptions(byzantine=3),
    "multi_krum": MultiKrumOptions(byzantine=3, selected=3),
  }.get(rule)
  aggregation = AggregationConfig(rule, options=options)
  value, _ = (
    AGGREGATORS.get(rule)
    .build(aggregation.options)
    .aggregate(stacked, jnp.ones(10), None, (), None)
  )
  assert np.abs(np.asarray(value["w"]) - honest.mean(0)).max() < 3.0
  poisoned, _ = mean().aggregate(stacked, jnp.ones(10), None, (), None)
  assert np.abs(np.asarray(poisoned["w"])).min() > 1e5


def test_centered_clip_bounds_what_outliers_can_move():
  reference = {"w": jnp.zeros(20)}
  stacked = {"w": jnp.concatenate([jnp.zeros((7, 20)), jnp.full((3, 20), 1e6)])}
  value, _ = centered_clip(1.0, 5).aggregate(stacked, jnp.ones(10), reference, (), None)
  assert float(jnp.linalg.norm(value["w"])) <= 5 * 1.0 * 3 / 10 + 1e-5


def test_dp_aggregation_clips_then_adds_the_noise_it_claims():
  contributions = {"w": jnp.asarray(RNG.normal(size=(4, 3000)) * 10, jnp.float32)}
  reference = {"w": jnp.zeros(3000)}
  quiet = chain(clip_update_norm(1.0), mean())
  value, _ = quiet.aggregate(contributions, jnp.ones(4), reference, ((), ()), jax.random.key(0))
  clipped = contributions["w"] / jnp.linalg.norm(contributions["w"], axis=1, keepdims=True)
  np.testing.assert_allclose(value["w"], clipped.mean(0), rtol=1e-5, atol=1e-7)
  noisy = chain(clip_update_norm(1.0), mean(), gaussian_noise(0.3))
  state = ((), (), ())
  with_noise, _ = noisy.aggregate(contributions, jnp.ones(4), reference, state, jax.random.key(0))
  added = np.asarray(with_noise["w"] - value["w"])
  assert added.std() == pytest.approx(0.3, rel=0.05) and abs(added.mean()) < 0.03


def test_epsilon_matches_dp_accounting_and_behaves():
  # replace-one moves the sum of clipped contributions by 2C: multiplier z / 2 for RDP
  direct = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  event = dp_accounting.SampledWithoutReplacementDpEvent(
    100, 10, dp_accounting.GaussianDpEvent(1.1 / 2)
  )
  direct.compose(dp_accounting.SelfComposedDpEvent(event, 50))
  assert accounting.epsilon(50, 10, 100, 1.1, 1e-5) == pytest.approx(direct.get_epsilon(1e-5))
  assert accounting.epsilon(100, 10, 100, 1.1, 1e-5) > accounting.epsilon(50, 10, 100, 1.1, 1e-5)
  assert accounting.epsilon(50, 10, 100, 2.0, 1e-5) < accounting.epsilon(50, 10, 100, 1.1, 1e-5)
  # every client each round: the Gaussian mechanism of sensitivity 2C, RDP T a / (2 (z/2)^2)
  everyone = accounting.epsilon(10, 5, 5, 4.0, 1e-5)
  orders = np.linspace(1.01, 200, 20000)
  bound = np.min(10 * orders / (2 * 4.0) + np.log(1 / 1e-5) / (orders - 1))
  assert everyone <= bound + 1e-6 and everyone > 0.5 * bound
  # the PLD accountant applies replace-one itself; it is tighter, and needs full participation
  tighter = accounting.epsilon(10, 5, 5, 4.0, 1e-5, accountant="pld")
  assert 0.7 * everyone < tighter <= everyone
  with pytest.raises(ValueError, match="full participation"):
    accounting.epsilon(10, 5, 50, 4.0, 1e-5, accountant="pld")


def test_poisson_sampling_is_accounted_under_add_or_remove_by_both_accountants():
  relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
  event = dp_accounting.SelfComposedDpEvent(
    dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.1)), 50
  )
  for name, tracker in (("rdp", rdp.RdpAccountant), ("pld", pld.PLDAccountant)):
    direct = tracker(neighboring_relation=relation)
    direct.compose(event)
    ours = accounting.epsilon(50, 10, 100, 1.1, 1e-5, name, "poisson")
    assert ours == pytest.approx(direct.get_epsilon(1e-5), rel=1e-6)
  rdp_eps = accounting.epsilon(50, 10, 100, 1.1, 1e-5, "rdp", "poisson")
  assert accounting.epsilon(50, 10, 100, 1.1, 1e-5, "pld", "poisson") <= rdp_eps


def test_poisson_cohorts_are_seeded_of_varying_size_at_the_expected_rate():
  from fedjax_lab.round_step import cohort_ids

  draws = [cohort_ids(3, r, 50, 10, "poisson") for r in range(400)]
  sizes = np.array([len(d) for d in draws])
  assert abs(sizes.mean() - 10) < 0.5 and sizes.std() > 1.5  # Binomial(50, 0.2): std 2.8
  counts = np.bincount(np.concatenate(draws), minlength=50)
  assert np.all(np.abs(counts / 400 - 0.2) < 0.1)  # each client at about q
  assert all(np.all(np.diff(d) > 0) for d in draws)  # sorted, no repeats
  np.testing.assert_array_equal(cohort_ids(3, 7, 50, 10, "poisson"), draws[7])


@pytest.mark.parametrize(
  "overrides,message",
  [
    (
      ["aggregation.rule=krum", "aggregation.krum.byzantine=3", "cohort_size=5"],
      "cohort_size must",
    ),
    (
      ["aggregation.rule=multi_krum", "aggregation.multi_krum.selected=9"],
      "aggregation.multi_krum.selected must be <= cohort_size=5",
    ),
    (["privacy.noise_multiplier=1"], "aggregation.clip_norm must be > 0 with privacy"),
    (
      ["privacy.noise_multiplier=1", "aggregation.clip_norm=1", "aggregation.rule=median"],
      "aggregation.rule must be mean",
    ),
    (["privacy.noise_multiplier=1", "aggregation.clip_norm=1"], "algorithm.weighting must be"),
    (["aggregation.trimmed_mean.fraction=0.5"], "aggregation.trimmed_mean.fraction must be in"),
    (["aggregation.trim_fraction=0.5"], "aggregation.trimmed_mean.fraction must be in"),  # moved
  ],
)
def test_robust_and_private_settings_are_checked_before_anything_runs(overrides, message):
  with pytest.raises(ValueError, match=message):
    load_config(None, ["data.num_clients=10", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize(
  "rule", ["trimmed_mean", "multi_krum", "geometric_median", "centered_clip"]
)
def test_every_robust_rule_trains_fedavg(tmp_path, rule):
  from fedjax_lab.runner import run

  config = load_config(
    None,
    [
      "data.source=digits",
      "data.num_clients=8",
      "cohort_size=6",
      "rounds=6",
      "eval_every=6",
      "checkpoint_every=0",
      "local.learning_rate=0.1",
      f"aggregation.rule={rule}",
      "aggregation.multi_krum.byzantine=1",
      "aggregation.multi_krum.selected=3",
      "aggregation.centered_clip.radius=10",
      f"out_dir={tmp_path}",
    ],
  )
  metrics = run(config, progress=False).metrics
  assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
  assert metrics[-1]["global_accuracy"] > 0.5


@pytest.mark.slow
def test_a_private_run_logs_the_epsilon_it_spends(tmp_path):
  from fedjax_lab.round_step import cohort_ids
  from fedjax_lab.runner import run

  config = load_config(
    None,
    [
      "data.source=digits",
      "data.num_clients=20",
      "cohort_size=5",
      "rounds=3",
      "checkpoint_every=0",
      "aggregation.clip_norm=1",
      "privacy.noise_multiplier=1.5",
      "algorithm.weighting=uniform",
      f"out_dir={tmp_path}",
    ],
  )
  epsilons = [row["privacy_epsilon"] for row in run(config, progress=False).metrics]
  assert epsilons == [accounting.epsilon(r, 5, 20, 1.5, 1e-5) for r in (1, 2, 3)]
  assert epsilons[0] < epsilons[1] < epsilons[2]
  # Poisson cohorts: the realized sizes logged, bytes per client drawn, the PLD accountant
  poisson = dataclasses.replace(
    config,
    cohort_sampling="poisson",
    privacy=dataclasses.replace(config.privacy, accountant="pld"),
    out_dir=str(tmp_path / "poisson"),
  )
  rows = run(poisson, progress=False).metrics
  sizes = [row["cohort_clients"] for row in rows]
  assert [len(cohort_ids(0, r, 20, 5, "poisson")) for r in range(3)] == sizes
  assert rows[0]["bytes_up"] / sizes[0] == rows[1]["bytes_up"] / sizes[1]
  assert [row["privacy_epsilon"] for row in rows] == [
    accounting.epsilon(r, 5, 20, 1.5, 1e-5, "pld", "poisson") for r in (1, 2, 3)
  ]


@pytest.mark.parametrize("dropped", [[], [1], [0, 3, 4]])
def test_secure_aggregation_masks_cancel_exactly_with_and_without_dropouts(dropped):
  from fedjax_lab.ops import secure_aggregation as secagg

  values = jnp.asarray(RNG.normal(size=(6, 50)), jnp.float32)
  key = jax.random.key(7)
  received = secagg.masked_inputs(values, key, 16)
  survived = jnp.asarray([i not in dropped for i in range(6)])
  plain = jnp.sum(jnp.where(survived[:, None], secagg.encode(values, 16), 0), 0, dtype=jnp.uint32)
  np.testing.assert_array_equal(secagg.unmask_sum(received, survived, key), plain)
  np.testing.assert_allclose(
    secagg.decode(plain, 16), values[np.asarray(survived)].sum(0), atol=6 * 2.0**-17
  )
  assert not np.array_equal(received[0], secagg.encode(values, 16)[0])  # a row reveals nothing
  assert int(jnp.sum(secagg.masks(key, 6, 50), 0, dtype=jnp.uint32).max()) == 0


@pytest.mark.slow
def test_secure_mean_equals_the_plain_mean_and_counts_its_bytes(tmp_path):
  from fedjax_lab.ops import secure_aggregation as secagg
  from fedjax_lab.ops.aggregators.reducers import SecureMeanOptions

  stacked = {"w": jnp.asarray(RNG.normal(size=(5, 30)), jnp.float32)}
  reference = {"w": jnp.zeros(30)}
  weights = jnp.asarray([1.0, 2.0, 3.0, 1.0, 1.0])
  secure = AGGREGATORS.get("secure_mean").build(SecureMeanOptions())
  value, _ = secure.aggregate(stacked, weights, reference, (), jax.random.key(0))
  plain, _ = mean().aggregate(stacked, weights, reference, (), None)
  np.testing.assert_allclose(value["w"], plain["w"], atol=1e-4)
  assert secure.upload_overhead(10) == secagg.overhead_bytes(10) == 32 + 9 * 64
  from fedjax_lab.runner import run

  base = ["data.source=digits", "data.num_clients=8", "cohort_size=4", "rounds=2"]
  base += ["checkpoint_every=0", "eval_every=2"]
  rows = {
    rule: run(
      load_config(None, base + [f"aggregation.rule={rule}", f"out_dir={tmp_path / rule}"]),
      progress=False,
    ).metrics
    for rule in ("mean", "secure_mean")
  }
  assert rows["secure_mean"][-1]["bytes_up"] == rows["mean"][-1]["bytes_up"] + 4 * (32 + 3 * 64)
  assert (
    abs(rows["secure_mean"][-1]["global_accuracy"] - rows["mean"][-1]["global_accuracy"]) < 0.02
  )


def test_adaptive_clipping_tracks_the_target_quantile_of_update_norms():
  norms = jnp.arange(1.0, 11.0)  # ten clients, update norms 1..10
  direction = jnp.zeros((10, 4)).at[:, 0].set(1.0)
  contributions = {"w": direction * norms[:, None]}
  reference = {"w": jnp.zeros(4)}
  rule = aggregators.adaptive_clip_mean(0.5, target_quantile=0.5, learning_rate=0.2)
  state = rule.init(reference)
  for step in range(200):
    value, state = rule.aggregate(
      contributions, jnp.ones(10), reference, state, jax.random.key(step)
    )
  assert 5.0 <= float(state) < 6.0  # half of the norms at or below it
  expected = jnp.minimum(norms, state).mean()
  np.testing.assert_allclose(value["w"][0], expected, rtol=1e-5)


def test_adaptive_clipping_noise_leaves_the_update_its_share():
  z, sigma_b, clip = 1.0, 2.0, 0.5
  rule = aggregators.adaptive_clip_mean(clip, 0.5, 0.2, noise_multiplier=z, count_stddev=sigma_b)
  contributions = {"w": jnp.full((10, 20000), 1e-4)}  # all unclipped
  reference = {"w": jnp.zeros(20000)}
  value, new_norm = rule.aggregate(
    contributions, jnp.ones(10), reference, rule.init(reference), jax.random.key(0)
  )
  z_update = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
  assert float(jnp.std(value["w"])) == pytest.approx(z_update * clip / 10, rel=0.03)
  assert float(new_norm) != clip
  with pytest.raises(ValueError, match="clip_count_stddev must be > privacy.noise_multiplier / 2"):
    aggregators.adaptive_clip_mean(1.0, 0.5, 0.2, noise_multiplier=2.0, count_stddev=0.9)


def test_adaptive_clipping_needs_an_initial_norm_and_the_mean():
  with pytest.raises(ValueError, match="aggregation.clip_norm must be > 0 with"):
    load_config(None, ["aggregation.clip_quantile=0.5"])
  with pytest.raises(ValueError, match="aggregation.rule must be mean with"):
    load_config(
      None, ["aggregation.clip_quantile=0.5", "aggregation.clip_norm=1", "aggregation.rule=median"]
    )


def test_per_layer_clipping_bounds_each_layer_and_the_whole_update():
  reference = {"a": jnp.zeros(3), "b": jnp.zeros(5)}
  update = {"a": jnp.array([3.0, 4.0, 0.0]), "b": jnp.full(5, 0.01)}  # a is large, b small
  clipped = aggregators.clip_layer_norms(1.0).apply(update, reference, (), jax.random.key(0))
  assert float(jnp.linalg.norm(clipped["a"])) == pytest.approx(2**-0.5, rel=1e-5)
  np.testing.assert_allclose(clipped["b"], update["b"])  # under its share: untouched
  whole = aggregators.clip_update_norm(1.0).apply(update, reference, (), jax.random.key(0))
  assert float(jnp.linalg.norm(whole["b"])) < 0.01 * 5**0.5  # whole-model clipping shrinks b


def test_local_noise_is_added_by_each_client_before_the_mean():
  from fedjax_lab.build import build_aggregator

  config = load_config(
    None,
    [
      "aggregation.clip_norm=0.5",
      "privacy.local_noise_multiplier=2",
      "cohort_size=16",
      "aggregation.clip_per_layer=true",
    ],
  )
  rule = build_aggregator(config)
  contributions = {"w": jnp.full((16, 40000), 1e-4)}
  reference = {"w": jnp.zeros(40000)}
  value, _ = rule.aggregate(
    contributions, jnp.ones(16), reference, rule.init(reference), jax.random.key(3)
  )
  assert float(jnp.std(value["w"])) == pytest.approx(2 * 0.5 / 16**0.5, rel=0.03)
  with pytest.raises(ValueError, match="clip_norm must be > 0 with privacy.local_noise"):
    load_config(None, ["privacy.local_noise_multiplier=1"])
