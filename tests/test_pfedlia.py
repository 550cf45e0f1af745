"""pFedLIA and the clustered baselines on digits clients in 3 label-permuted latent groups:
the clusters are recovered and personalization beats one global model and local training."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import monitoring

from fedjax_lab import run
from fedjax_lab.algorithms import ClientSetup
from fedjax_lab.algorithms.cfl import CFLConfig
from fedjax_lab.algorithms.ifca import IFCAConfig
from fedjax_lab.algorithms.pfedlia import PFedLIAConfig, pfedlia, scoring_split
from fedjax_lab.build import build_federation
from fedjax_lab.config import (
  AlgorithmConfig,
  DataConfig,
  ExperimentConfig,
  LocalConfig,
  load_config,
)
from fedjax_lab.data import groups
from fedjax_lab.data.federated import Cohort
from fedjax_lab.engine.execution import Executor
from fedjax_lab.engine.local import LocalSchedule
from fedjax_lab.models import build_model

pytestmark = (
  pytest.mark.slow
)  # trains whole federations to show the method's effect (make test-fast skips it)

GROUPED = ExperimentConfig(
  data=DataConfig(source="digits", num_clients=12, partition="iid", latent_groups=3),
  local=LocalConfig(learning_rate=0.1, epochs=2, batch_size=10),
  rounds=12,
  cohort_size=12,
  eval_every=6,
  checkpoint_every=0,
)
PFEDLIA = PFedLIAConfig(warmup_rounds=2)
VARIANTS = {
  "pfedlia": AlgorithmConfig("pfedlia", options=PFEDLIA),
  "pfedlia_decentralized": AlgorithmConfig(
    "pfedlia", options=dataclasses.replace(PFEDLIA, clustering="decentralized")
  ),
  "pfedlia_spectral": AlgorithmConfig(
    "pfedlia", options=dataclasses.replace(PFEDLIA, clustering="spectral", num_clusters=3)
  ),
  "oracle": AlgorithmConfig("oracle"),
  "ifca": AlgorithmConfig("ifca", options=IFCAConfig(num_clusters=3)),
  "cfl": AlgorithmConfig("cfl", options=CFLConfig(eps1=0.7, eps2=1.0)),
  "fedavg": AlgorithmConfig("fedavg"),
  "local": AlgorithmConfig("local"),
}


@pytest.fixture(scope="module")
def grouped_federation():
  return build_federation(GROUPED.data)


@pytest.fixture(scope="module")
def final(grouped_federation, tmp_path_factory):
  """``final(variant)``: the last evaluation row of that variant, run when first asked for (a
  test pays only for the variants it reads, whichever xdist worker runs it)."""

  @functools.cache
  def row(name):
    config = dataclasses.replace(
      GROUPED, algorithm=VARIANTS[name], out_dir=str(tmp_path_factory.mktemp(name))
    )
    return run(config, progress=False, data=grouped_federation).metrics[-1]

  return row


def test_group_shift_permutes_labels_by_group(grouped_federation):
  data = grouped_federation
  np.testing.assert_array_equal(data.client_groups, np.repeat([0, 1, 2], 4))
  plain = build_federation(dataclasses.replace(GROUPED.data, latent_groups=0))
  permutations = groups.label_permutations(3, 10, GROUPED.data.seed + 2)
  np.testing.assert_array_equal(permutations[0], np.arange(10))
  for client, group in enumerate(data.client_groups):
    real = slice(0, data.train_num_examples[client])
    want = permutations[group][plain.train_y[client, real]]
    np.testing.assert_array_equal(data.train_y[client, real], want)
    np.testing.assert_array_equal(data.train_x[client], plain.train_x[client])


def test_rotation_turns_each_group_by_a_quarter_per_group(grouped_federation):
  plain = build_federation(dataclasses.replace(GROUPED.data, latent_groups=0))
  as_images = lambda arrays: arrays.replace_rows(x=arrays.x.reshape(-1, 8, 8, 1))
  images = dataclasses.replace(plain, train=as_images(plain.train), test=as_images(plain.test))
  turned = groups.shift_by_group(images, np.repeat([0, 1, 2], 4), "rotation", 0)
  np.testing.assert_array_equal(turned.train_x[5], np.rot90(images.train_x[5], 1, axes=(1, 2)))
  np.testing.assert_array_equal(turned.train_y, images.train_y)


def test_shakespeare_plays_map_to_genres():
  np.testing.assert_array_equal(
    groups.shakespeare_genres(["hamlet/HAMLET", "henry_v/KING HENRY", "tempest/ARIEL", "x/Y"]),
    [2, 1, 0, -1],
  )


def test_pfedlia_recovers_the_groups_and_matches_the_oracle(final):
  for variant in ("pfedlia", "pfedlia_decentralized", "pfedlia_spectral"):
    assert final(variant)["cluster_ari"] >= 0.9, variant
    assert final(variant)["client_accuracy_mean"] >= final("oracle")["client_accuracy_mean"] - 0.03
  assert final("pfedlia")["client_accuracy_mean"] > final("fedavg")["client_accuracy_mean"] + 0.3
  assert final("pfedlia")["client_accuracy_mean"] > final("local")["client_accuracy_mean"] + 0.03


def test_ifca_and_cfl_find_the_groups_too(final):
  assert final("ifca")["cluster_ari"] >= 0.9
  assert final("cfl")["num_clusters"] >= 2 and final("cfl")["cluster_ari"] > 0.5


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      ["algorithm.name=pfedlia", "data.num_clients=10", "cohort_size=5"],
      "cohort_size must be data.num_clients=10 for pfedlia",
    ),
    (
      ["algorithm.name=pfedlia", "algorithm.pfedlia.clustering=spectral"],
      "algorithm.pfedlia.num_clusters must be >= 2 for spectral",
    ),
    (["algorithm.pfedlia.influence=shapley"], "algorithm.pfedlia.influence must be one of loss"),
    (["algorithm.pfedlia.vote_epsilon=1"], "vote_epsilon must be 0 unless influence='vote'"),
    (["data.latent_groups=5", "data.group_shift=rotation"], "data.latent_groups must be <= 4"),
    (
      ["algorithm.finetune=true"],
      "algorithm.finetune is not a config field; allowed: name, weighting",
    ),
  ],
)
def test_bad_clustering_config_names_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    load_config(None, overrides)


def test_oracle_without_known_groups_is_refused_before_compiling(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "jit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("jit")))
  config = dataclasses.replace(
    GROUPED,
    data=dataclasses.replace(GROUPED.data, latent_groups=0),
    algorithm=AlgorithmConfig("oracle"),
    out_dir=str(tmp_path),
  )
  with pytest.raises(ValueError, match="algorithm.name='oracle' needs a federation with known"):
    run(config, progress=False)


def test_resume_is_identical_across_the_phases(grouped_federation, tmp_path):
  config = dataclasses.replace(
    GROUPED,
    rounds=6,
    eval_every=3,
    checkpoint_every=3,
    algorithm=VARIANTS["pfedlia"],
    out_dir=str(tmp_path / "a"),
  )
  straight = run(config, progress=False, data=grouped_federation)
  split = dataclasses.replace(config, rounds=3, out_dir=str(tmp_path / "b"))
  run(split, progress=False, data=grouped_federation)
  resumed = run(
    dataclasses.replace(split, rounds=6), resume=True, progress=False, data=grouped_federation
  )
  drop = lambda rows: [{k: v for k, v in r.items() if k != "round_seconds"} for r in rows]
  assert drop(resumed.metrics) == drop(straight.metrics)


def test_each_phase_compiles_once(grouped_federation):
  compiles = []
  monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: (
      compiles.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
    )
  )
  data = grouped_federation
  setup = ClientSetup(
    build_model("mlp", 10),
    data.train_x[0, :1],
    optax.sgd(0.1),
    LocalSchedule(10, data.max_examples, epochs=1),
    Executor("vmap"),
    data.num_clients,
  )
  algorithm = pfedlia(setup, PFEDLIA)
  state = algorithm.init(jax.random.key(0))
  cohort = data.cohort(np.arange(data.num_clients))
  per_round = []
  for round_index in range(6):  # warm-up, warm-up, influence, personalized x 3
    before = len(compiles)
    state, metrics = algorithm.round(state, cohort, jax.random.key(round_index))
    float(metrics["train_loss"])
    per_round.append(len(compiles) - before)
    if round_index == 2:
      assert metrics["influence_model_evaluations"] == 12 * 12 + 12
  assert per_round[1] == per_round[4] == per_round[5] == 0, per_round


def test_influence_rounds_follow_warmup_and_recluster_period():
  from fedjax_lab.algorithms.pfedlia import is_influence_round

  assert [r for r in range(12) if is_influence_round(r, 3, 0)] == [3]
  assert [r for r in range(12) if is_influence_round(r, 3, 4)] == [3, 7, 11]
  assert [r for r in range(5) if is_influence_round(r, 0, 2)] == [0, 2, 4]


def test_vote_privacy_composes_every_vote_a_client_has_released():
  from fedjax_lab.build import build_experiment
  from fedjax_lab.ops import accounting

  config = load_config(
    None,
    [
      "data.source=digits",
      "data.num_clients=6",
      "cohort_size=6",
      "algorithm.name=pfedlia",
      "algorithm.pfedlia.influence=vote",
      "algorithm.pfedlia.vote_epsilon=0.5",
      "algorithm.pfedlia.warmup_rounds=2",
      "algorithm.pfedlia.recluster_every=3",
    ],
  )
  privacy = build_experiment(config).algorithm.privacy
  assert privacy(2)["vote_epsilon_total"] == 0.0  # warm-up only: no vote yet
  one_phase = privacy(3)["vote_epsilon_total"]  # the influence round 2: 6 votes
  assert one_phase == pytest.approx(accounting.randomized_response_epsilon(6, 0.5, 1e-5))
  assert privacy(5)["vote_epsilon_total"] == one_phase  # next phase at round 5
  assert privacy(6)["vote_epsilon_total"] > one_phase
  # one release is 0.5-DP; many compose to less than their sum
  assert accounting.randomized_response_epsilon(1, 0.5, 1e-5) == pytest.approx(0.5, abs=1e-3)
  assert accounting.randomized_response_epsilon(100, 0.5, 1e-5) < 0.7 * 100 * 0.5


def test_ifca_clients_join_the_cluster_model_of_lowest_loss_and_only_its_members_move_it(
  digits_dataset,
):
  from fedjax_lab.build import build_experiment
  from fedjax_lab.data import FederatedData

  labels = digits_dataset.train_y
  clients = [np.flatnonzero(labels == k)[:30] for k in (0, 1, 0)]  # two 0-clients, one 1-client
  data = FederatedData.from_indices(digits_dataset, clients, [np.array([], int)] * 3)
  config = load_config(
    None,
    [
      "data.source=digits",
      "data.num_clients=3",
      "cohort_size=3",
      "algorithm.name=ifca",
      "algorithm.ifca.num_clusters=2",
      "local.learning_rate=0.01",
      "data.test_fraction=0",
    ],
  )
  algorithm = build_experiment(config, data).algorithm
  state = algorithm.init(jax.random.key(0))
  bias = lambda k: jnp.zeros(10).at[k].set(20.0)  # cluster k predicts label k whatever the input
  heads = {"kernel": jnp.zeros((2, 200, 10)), "bias": jnp.stack([bias(1), bias(0)])}
  state = state.replace(cluster_params={**state.cluster_params, "head": heads})
  new, _ = jax.jit(algorithm.round)(state, data.cohort(np.arange(3)), jax.random.key(1))
  np.testing.assert_array_equal(new.choices, [1, 0, 1])  # the 0-clients join cluster 1
  moved = lambda k: float(jnp.abs(new.cluster_params["head"]["bias"][k] - heads["bias"][k]).sum())
  assert moved(0) > 0 and moved(1) > 0
  np.testing.assert_allclose(  # cluster 0 is client 1's trained model alone
    new.cluster_params["head"]["bias"][0], new.trained_params["head"]["bias"][1], rtol=1e-6
  )


def test_cfl_splits_a_cluster_only_at_a_joint_stationary_point_with_diverging_clients():
  from fedjax_lab.algorithms.cfl import split_rule

  v = jnp.array([1.0, 0.5, 0.0])
  updates = jnp.stack([v, 1.1 * v, -v, -0.9 * v, 0.01 * v])  # 0,1 against 2,3; 4 elsewhere
  labels = jnp.array([0, 0, 0, 0, 4])
  split, norms = split_rule(updates, jnp.ones(5), labels, eps1=0.2, eps2=0.5)
  assert split[0] == split[1] != split[2] == split[3] and split[4] == 4
  assert float(norms["max_client_update_norm"]) == pytest.approx(float(jnp.linalg.norm(1.1 * v)))
  same = lambda eps1, eps2: np.array_equal(
    split_rule(updates, jnp.ones(5), labels, eps1, eps2)[0], labels
  )
  assert same(eps1=0.01, eps2=0.5)  # the mean update is not small enough: no split
  assert same(eps1=0.2, eps2=5.0)  # no client far enough from stationary: no split


def test_scoring_split_is_a_seeded_random_draw_never_trained_on():
  """Rows carry their own id: the held-out rows and the rows a client trains on are disjoint
  and together its real rows; the draw depends on the key, not on the dataset order."""
  sizes = np.array([10, 7, 2, 25], np.int32)
  ids = np.zeros((4, 25), np.int32)
  for client, n in enumerate(sizes):
    ids[client, :n] = 1000 * client + np.arange(n) + 1  # 0 marks padding
  cohort = Cohort(np.arange(4, dtype=np.int32), ids[..., None].astype(np.float32), ids, sizes)
  draws = []
  for seed in (0, 1):
    scoring, fit, held_out = scoring_split(cohort, jax.random.key(seed), 0.2, "random")
    np.testing.assert_array_equal(held_out, [2, 1, 1, 5])
    np.testing.assert_array_equal(fit.num_examples, sizes - held_out)
    np.testing.assert_array_equal(scoring.x[..., 0], scoring.y)  # x and y moved together
    for client, n in enumerate(sizes):
      scored = set(np.asarray(scoring.y[client, : held_out[client]]).tolist())
      trained = set(np.asarray(fit.y[client, : fit.num_examples[client]]).tolist())
      assert not scored & trained
      assert scored | trained == set(ids[client, :n].tolist())
    draws.append(np.asarray(scoring.y[3, :5]))
  assert not np.array_equal(draws[0], draws[1])
  first, _, _ = scoring_split(cohort, jax.random.key(0), 0.2, "first")
  np.testing.assert_array_equal(first.y[3, :5], ids[3, :5])
