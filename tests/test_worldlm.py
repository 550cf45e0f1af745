"""WorldLM: the federation tree, the tree aggregation ops against per-node reference loops,
the text world loader on locally made files, the round (one compilation for the whole tree,
DP at the federation boundary) and the method's effect on a federation of distinct languages."""

from __future__ import annotations

import gzip
import pathlib

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import rdp

from fedjax_lab.algorithms.worldlm import split_params
from fedjax_lab.build import build_experiment
from fedjax_lab.config import load_config
from fedjax_lab.data import FederatedData, text_world
from fedjax_lab.data.tree import FederationTree
from fedjax_lab.ops import tree_aggregation as ta
from fedjax_lab.runner import run

pytestmark = pytest.mark.slow  # trains whole federations of federations (make test-fast skips it)

ROOT = pathlib.Path(__file__).resolve().parents[1]

PATHS = ["a/x/1", "a/x/2", "a/y/3", "b/z/4", "b/z/5", "b/w/6", "b/w/7", "c/v/8"]


def test_tree_from_paths_numbers_parents_first_and_checks_itself():
  tree = FederationTree.from_paths(PATHS)
  assert tree.names[0] == "world" and tree.num_clients == 8
  assert all(tree.parent_of[v] < v for v in range(1, tree.num_nodes))
  assert [tree.names[n] for n in tree.client_node] == PATHS
  assert [tree.names[n] for n in tree.ancestor_at_depth(1)] == list("aaabbbbc")
  assert tree.depth.max() == 3
  with pytest.raises(ValueError, match="distinct leaves"):
    FederationTree.from_paths(["a/x", "a/x/1"])  # a client that is also a federation
  with pytest.raises(ValueError, match="earlier node"):
    FederationTree(np.array([-1, 2, 0]), ("r", "a", "b"), np.array([1]))


def _reference_tree_attention(previous, weights, tree, similarity, temperature, include_parent):
  """The per-node loop that ``tree_attention`` must equal (numpy, one node at a time)."""
  values = {v: previous[v] for v in range(tree.num_nodes)}
  below = {v: float(weights[v]) for v in range(tree.num_nodes)}
  internal = set(tree.internal_nodes.tolist())
  for v in internal:
    below[v] = 0.0
  for level in range(tree.depth.max() - 1, -1, -1):
    for p in [v for v in internal if tree.depth[v] == level]:
      children = [c for c in np.flatnonzero(tree.parent_of == p) if below[c] > 0]
      below[p] = sum(below[c] for c in children)
      if not children:
        continue
      candidates = [values[c] for c in children] + ([previous[p]] if include_parent else [])
      query = previous[p]
      if similarity == "cosine":
        scores = [q @ query / (np.linalg.norm(q) * np.linalg.norm(query)) for q in candidates]
      else:
        scores = [q @ query / len(query) for q in candidates]
      scores = np.array(scores) / temperature
      alpha = np.exp(scores - scores.max())
      alpha /= alpha.sum()
      values[p] = sum(a * c for a, c in zip(alpha, candidates))
  return np.stack([values[v] for v in range(tree.num_nodes)])


@pytest.mark.parametrize("similarity,include_parent", [("cosine", True), ("dot", False)])
def test_tree_attention_matches_a_per_node_loop_on_a_random_three_level_tree(
  similarity, include_parent
):
  rng = np.random.default_rng(0)
  tree = FederationTree.from_paths(PATHS)
  previous = rng.normal(size=(tree.num_nodes, 6)).astype(np.float32)
  weights = np.zeros(tree.num_nodes, np.float32)
  weights[tree.client_node] = rng.integers(1, 50, tree.num_clients)
  weights[tree.client_node[3]] = 0  # an empty client: masked
  got, received = ta.tree_attention(
    {"k": jnp.asarray(previous)},
    jnp.asarray(weights),
    tree.parent_of,
    tree.depth,
    similarity=similarity,
    temperature=0.7,
    include_parent=include_parent,
  )
  expected = _reference_tree_attention(previous, weights, tree, similarity, 0.7, include_parent)
  np.testing.assert_allclose(got["k"], expected, rtol=1e-5, atol=1e-6)
  # each parent's children's weights (plus its own, if included) sum to one
  parents = np.maximum(tree.parent_of, 0)
  sums = np.zeros(tree.num_nodes)
  np.add.at(sums, parents[1:], np.asarray(received)[1:])
  for p in tree.internal_nodes:
    assert sums[p] <= 1 + 1e-6 and (include_parent or sums[p] == pytest.approx(1, abs=1e-5))
  assert received[tree.client_node[3]] == 0


def test_attention_is_the_plain_mean_of_equal_children_and_ignores_masked_ones():
  children = {"k": jnp.ones((4, 3))}
  previous = {"k": jnp.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])}
  owner, mask = jnp.array([0, 0, 0, 0]), jnp.array([True, True, True, False])
  new, alpha, own = ta.attention_aggregate(
    previous, children, owner, mask, 2, similarity="cosine", temperature=0.1, include_parent=False
  )
  np.testing.assert_allclose(alpha, [1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)
  np.testing.assert_allclose(new["k"][0], jnp.ones(3), rtol=1e-6)
  np.testing.assert_allclose(new["k"][1], previous["k"][1])  # no children: unchanged
  moved = {"k": children["k"].at[3].set(100.0)}  # the masked child changes nothing
  again, _, _ = ta.attention_aggregate(
    previous, moved, owner, mask, 2, similarity="cosine", temperature=0.1, include_parent=False
  )
  np.testing.assert_array_equal(again["k"], new["k"])
  assert float(own.sum()) == 0.0


def test_tree_mean_of_the_backbone_equals_the_flat_token_weighted_mean():
  rng = np.random.default_rng(1)
  tree = FederationTree.from_paths(PATHS)
  values = rng.normal(size=(tree.num_nodes, 5, 2)).astype(np.float32)
  weights = np.zeros(tree.num_nodes, np.float32)
  tokens = rng.integers(1, 100, tree.num_clients).astype(np.float32)
  weights[tree.client_node] = tokens
  mean, total = ta.tree_mean({"b": jnp.asarray(values)}, weights, tree.parent_of, tree.depth)
  flat = (tokens[:, None, None] * values[tree.client_node]).sum(0) / tokens.sum()
  np.testing.assert_allclose(mean["b"][0], flat, rtol=1e-5, atol=1e-6)
  assert float(total[0]) == tokens.sum()


def test_residual_exchange_keeps_distinct_nodes_and_mixes_similar_ones():
  tree = FederationTree.from_paths(["a/x/1", "a/y/2", "b/z/3"])
  x, y, z = (tree.names.index(n) for n in ("a/x", "a/y", "b/z"))
  values = np.zeros((tree.num_nodes, 4), np.float32)
  values[x] = [1, 0, 0, 0]
  values[y] = [0.9, 0.1, 0, 0]  # x and y resemble each other, z does not
  values[z] = [0, 0, 0, 1]
  rows = np.zeros(tree.num_nodes, bool)
  rows[[x, y, z]] = True
  exchange = lambda temperature: ta.residual_exchange(
    {"k": jnp.asarray(values)},
    tree.parent_of,
    tree.depth,
    rows,
    similarity="cosine",
    temperature=temperature,
  )
  cold, _ = exchange(1e-4)
  np.testing.assert_allclose(cold["k"], values, atol=1e-5)  # T -> 0 changes nothing
  warm, mixing = exchange(0.5)
  assert mixing[x, y] > mixing[x, z] and np.allclose(np.asarray(mixing)[[x, y, z]].sum(1), 1)
  assert np.linalg.norm(warm["k"][x] - values[y]) < np.linalg.norm(values[x] - values[y])


ROFF = r""".TH TEST 1
.SH NAME
Gr\(:u\(sse \- ein \fBTest\fR \(Fovoll\(Fc
.\" a comment
caf\('e und \[:o]l\*(Tm
"""


def test_man_text_decodes_characters_and_drops_markup():
  assert text_world.man_text(ROFF).splitlines() == ["Grüße - ein Test «voll»", "café und öl"]


def _world_files(tmp_path):
  plays = tmp_path / "plays"
  plays.mkdir()
  speech = "HAMLET.\nTo be, or not to be, that is the question.\n\n" * 80
  (plays / "hamlet.txt").write_text(speech)
  (plays / "tempest.txt").write_text(speech.replace("HAMLET", "ARIEL"))
  stdlib = tmp_path / "lib"
  for package in text_world.CODE_PACKAGES:
    (stdlib / package).mkdir(parents=True)
    (stdlib / package / "mod.py").write_text(f"def {package}(x):\n  return x + 1\n" * 200)
  for language in text_world.LANGUAGES:
    (tmp_path / "man" / language / "man1").mkdir(parents=True)
    page = ROFF * 60
    (tmp_path / "man" / language / "man1" / "ls.1.gz").write_bytes(gzip.compress(page.encode()))
  return text_world.world_documents(str(plays), str(tmp_path / "man"), str(stdlib))


def test_text_world_builds_one_client_per_document_named_by_its_path(tmp_path):
  documents = _world_files(tmp_path)
  paths = sorted(path for path, _ in documents)
  assert "drama/tragedy/hamlet" in paths and "prose/fr/ls.1" in paths
  assert "code/email/mod" in paths
  data = text_world.text_world(documents, sequence_length=16, min_client_bytes=100)
  assert data.num_classes == 256 and data.train_x.shape[1] == 16
  np.testing.assert_array_equal(data.train_x[:, 1:], data.train_y[:, :-1])
  assert sorted(data.group_names) == paths
  with pytest.raises(FileNotFoundError, match="manual pages"):
    text_world.world_documents(str(tmp_path / "plays"), str(tmp_path / "none"), str(tmp_path))


def _markov_documents(seed: int = 0) -> list[tuple[str, str]]:
  """Three federations writing in three disjoint alphabets, two sub-federations each with
  their own Markov chain, two clients per sub-federation (of different sizes)."""
  rng = np.random.default_rng(seed)
  documents = []
  for federation, alphabet in (("a", "abcdefgh"), ("b", "01234567"), ("c", "STUVWXYZ")):
    for sub in ("x", "y"):
      transitions = rng.dirichlet(np.full(len(alphabet), 0.1), size=len(alphabet))
      for client, size in ((0, 1800), (1, 900)):
        state, text = 0, []
        for _ in range(size):
          state = rng.choice(len(alphabet), p=transitions[state])
          text.append(alphabet[state])
        documents.append((f"{federation}/{sub}/{client}", "".join(text)))
  return documents


@pytest.fixture(scope="module")
def markov_world() -> FederatedData:
  dataset = text_world.text_world(
    _markov_documents(), sequence_length=32, min_client_bytes=100, clients_per_group=2
  )
  return FederatedData.by_group(dataset, 0.2, seed=1)


def _config(tmp_path, variant, *overrides):
  return load_config(
    None,
    [
      "data.source=text_world",
      "data.partition=natural",
      "data.num_clients=12",
      "model.name=byte_lm",
      "local.optimizer=adamw",
      "local.learning_rate=0.01",
      "local.steps=4",
      "local.batch_size=8",
      "algorithm.name=worldlm",
      f"algorithm.worldlm.variant={variant}",
      "algorithm.worldlm.key_layers=block1,final_norm,head",
      "cohort_size=12",
      "eval_every=100",
      f"out_dir={tmp_path / variant}",
      *overrides,
    ],
  )


def test_one_compilation_runs_the_whole_tree_and_keys_stay_per_node(markov_world, tmp_path):
  experiment = build_experiment(_config(tmp_path, "worldlm", "rounds=3"), markov_world)
  algorithm, data = experiment.algorithm, markov_world
  traces = []

  def counted(state, cohort, key):
    traces.append(1)
    return algorithm.round(state, cohort, key)

  round_fn = jax.jit(counted)
  state = algorithm.init(jax.random.key(0))
  for r in range(3):
    cohort = data.cohort(np.random.default_rng(r).permutation(data.num_clients))
    state, metrics = round_fn(state, cohort, jax.random.key(r))
  assert len(traces) == 1 and np.isfinite(float(metrics["train_loss"]))
  tree = FederationTree.from_paths(data.client_paths)
  keys = np.asarray(state.keys["head/kernel"])
  subs = [tree.names.index(n) for n in ("a/x", "b/x", "c/y")]
  assert len({keys[s].tobytes() for s in subs}) == 3  # each sub-federation has its own K
  personal = algorithm.personal_params(state)  # B, and the K of each client's sub-federation
  backbone, key = split_params(personal, ("block1", "final_norm", "head"))
  assert set(backbone) | set(key) == set(split_params(experiment.setup.params_shape, ())[0])
  np.testing.assert_array_equal(backbone["embed/embedding"][5], state.backbone["embed/embedding"])
  np.testing.assert_array_equal(key["head/kernel"], keys[tree.parent_of[tree.client_node]])


def test_dp_clips_each_federation_and_adds_the_stated_noise(markov_world, tmp_path):
  clip, z = 0.01, 2.0
  config = _config(
    tmp_path,
    "fedavg",
    "rounds=1",
    f"algorithm.worldlm.dp_noise_multiplier={z}",
    f"algorithm.worldlm.dp_clip_norm={clip}",
  )
  algorithm = build_experiment(config, markov_world).algorithm
  state = algorithm.init(jax.random.key(0))
  cohort = markov_world.cohort(np.arange(markov_world.num_clients))
  new, _ = jax.jit(algorithm.round)(state, cohort, jax.random.key(1))
  change = np.concatenate(
    [np.ravel(new.backbone[k] - state.backbone[k]) for k in sorted(state.backbone)]
  )
  # three clipped federation updates of norm <= C averaged, plus N(0, (z C / 3)^2) noise
  assert change.std() == pytest.approx(z * clip / 3, rel=0.05)
  signal = np.linalg.norm(change) ** 2 - change.size * (z * clip / 3) ** 2
  assert signal <= (clip * 1.2) ** 2
  direct = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  direct.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z / 2), 7))
  spent = algorithm.privacy(7)
  assert spent["privacy_epsilon"] == pytest.approx(direct.get_epsilon(1e-5))
  assert spent["privacy_epsilon_pld"] <= spent["privacy_epsilon"]


def test_worldlm_personalizes_where_one_model_cannot(markov_world, tmp_path):
  """Three alphabets, six Markov chains: a model per sub-federation's K fits each client's
  chain; FedAvg's one model must spread over all of them."""
  final = {}
  for variant in ("fedavg", "worldlm"):
    result = run(_config(tmp_path, variant, "rounds=12"), data=markov_world, progress=False)
    final[variant] = result.metrics[-1]["client_loss"]
  assert final["worldlm"] < final["fedavg"] - 0.2, final


def test_worldlm_refuses_what_it_would_ignore(markov_world, tmp_path):
  with pytest.raises(ValueError, match="key_layers must be path components"):
    build_experiment(
      _config(tmp_path, "worldlm", "algorithm.worldlm.key_layers=nothing"), markov_world
    )
  with pytest.raises(ValueError, match="privacy.noise_multiplier"):
    build_experiment(
      _config(tmp_path, "worldlm", "privacy.noise_multiplier=1", "aggregation.clip_norm=1"),
      markov_world,
    )
  digits = load_config(None, ["algorithm.name=worldlm", "cohort_size=20"])
  with pytest.raises(ValueError, match="needs a federation tree"):
    build_experiment(digits)


def test_tfds_text_world_reads_groups_of_records_from_a_spec(tmp_path):
  import json

  import tensorflow_datasets as tfds

  spec = tmp_path / "world.json"
  groups = {"news/en": "lm1b:train", "reviews/en": "imdb_reviews:test"}
  spec.write_text(json.dumps({"groups": groups, "clients_per_group": 2, "records_per_client": 3}))
  with tfds.testing.mock_data(num_examples=10):
    documents = text_world.tfds_documents(str(spec))
  assert [p for p, _ in documents] == ["news/en/0", "news/en/1", "reviews/en/0", "reviews/en/1"]
  assert all(isinstance(text, str) and text for _, text in documents)
  spec.write_text(
    json.dumps(
      {"groups": {"x/y": "no_such_dataset"}, "records_per_client": 1, "clients_per_group": 1}
    )
  )
  with pytest.raises(FileNotFoundError, match="no_such_dataset"):
    text_world.tfds_documents(str(spec), str(tmp_path))


@pytest.mark.parametrize(
  "path", sorted((ROOT / "experiments/worldlm/paper_scale").glob("*_[0-9]*m.json")), ids=str
)
def test_paper_scale_configs_are_valid(path):
  import json

  config = load_config(str(path))
  spec = json.loads((ROOT / config.data.source_options.spec).read_text())
  groups = {group.rsplit("/", 1)[0] for group in spec["groups"]}
  assert config.data.num_clients == len(spec["groups"]) * spec["clients_per_group"]
  assert len(groups) >= 3 and config.model.name.startswith("transformer_lm_")
