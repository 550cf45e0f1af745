"""The experiment scripts run end to end at a tiny size on offline digits."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # runs the reproduction scripts end to end (make test-fast skips it)

ROOT = pathlib.Path(__file__).parent.parent
PFEDLIA_RUNS = 170  # committed per-run metric files of experiments/pfedlia/reproduce.py
SYSTEMS_RUNS = 110  # committed records of experiments/systems/reproduce.py
PERSONALIZED_RUNS = 225  # committed per-run files of experiments/personalized/reproduce.py
TINY = [
  "data.source=digits",
  "data.num_clients=10",
  "data.dirichlet.min_examples=5",
  "cohort_size=4",
  "rounds=2",
  "eval_every=1",
  "checkpoint_every=0",
]


def test_quickstart_script(tmp_path):
  done = subprocess.run(
    [sys.executable, str(ROOT / "experiments/quickstart/run.py"), *TINY, f"out_dir={tmp_path}"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "centralized" in done.stdout and "global_acc" in done.stdout
  assert (tmp_path / "comparison.png").exists()
  assert len(json.loads((tmp_path / "results.json").read_text())) == 6
  # `tensorboard --logdir runs/quickstart` (README) finds every method's scalars there.
  from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

  board = EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
  board.Reload()
  runs = {run: tags["scalars"] for run, tags in board.Runs().items()}
  assert len(runs) == 6 and all("train_loss" in tags for tags in runs.values())
  fedavg = [run for run in runs if run.startswith("fedavg")][0]
  assert [e.step for e in board.Scalars(fedavg, "train_loss")] == [1, 2]


def test_fedmr_reproduction_script(tmp_path):
  overrides = [arg for item in TINY + [f"out_dir={tmp_path}"] for arg in ("--set", item)]
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "experiments/fedmr/reproduce.py"),
      "--config",
      str(ROOT / "experiments/fedmr/mlp.json"),
      "--alphas",
      "0.5",
      "--seeds",
      "0",
      "--algorithms",
      "fedmr",
      "fedavg",
      *overrides,
    ],
    capture_output=True,
    text=True,
    cwd=tmp_path,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert [row["algorithm"] for row in summary["rows"]] == ["fedmr", "fedavg"]
  assert (tmp_path / "divergence.png").exists()


def test_pfedlia_reproduction_script(tmp_path):
  tiny = [
    "data.source=digits",
    "data.num_clients=8",
    "cohort_size=8",
    "rounds=2",
    "eval_every=1",
    "algorithm.pfedlia.warmup_rounds=1",
  ]
  overrides = [arg for item in tiny for arg in ("--set", item)]
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "experiments/pfedlia/reproduce.py"),
      "--benchmarks",
      "permuted",
      "dirichlet",
      "--seeds",
      "0",
      "1",
      "--variants",
      "pfedlia",
      "oracle",
      "--runs",
      str(tmp_path / "runs"),
      "--out",
      str(tmp_path / "results"),
      *overrides,
    ],
    capture_output=True,
    text=True,
    cwd=tmp_path,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  files = sorted(p.relative_to(tmp_path / "results") for p in tmp_path.glob("results/*/*.jsonl"))
  assert [str(f) for f in files] == [
    "dirichlet/pfedlia_seed0.jsonl",
    "dirichlet/pfedlia_seed1.jsonl",
    "permuted/oracle_seed0.jsonl",
    "permuted/oracle_seed1.jsonl",
    "permuted/pfedlia_seed0.jsonl",
    "permuted/pfedlia_seed1.jsonl",
  ]
  summary = (tmp_path / "results" / "summary.md").read_text()
  assert summary.index("permuted: ") < summary.index("dirichlet: ") and "2-round budget" in summary
  assert "(n=2)" in summary and (tmp_path / "results" / "accuracy.png").exists()


def test_personalized_reproduction_script(tmp_path):
  tiny = ["data.source=digits", "data.num_clients=8", "cohort_size=8", "rounds=2", "eval_every=1",
          "algorithm.pfedlia.warmup_rounds=1"]  # fmt: skip
  overrides = [arg for item in tiny for arg in ("--set", item)]
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "experiments/personalized/reproduce.py"),
      *("--benchmarks", "dirichlet", "shards", "--seeds", "0", "1"),
      *("--methods", "fedavg_ft", "fedper", "pfedlia", "local"),
      *("--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "results"), *overrides),
    ],
    capture_output=True,
    text=True,
    cwd=tmp_path,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  files = sorted(str(p.relative_to(tmp_path / "results")) for p in tmp_path.glob("results/*/*"))
  # pFedLIA's own benchmarks take its methods' committed runs; on shards they run here too
  assert files == [
    f"dirichlet/{m}_seed{s}.jsonl" for m in ("fedavg_ft", "fedper") for s in (0, 1)
  ] + [
    f"shards/{m}_seed{s}.jsonl" for m in ("fedavg_ft", "fedper", "local", "pfedlia") for s in (0, 1)
  ]
  rows = [json.loads(line) for line in (tmp_path / "results/dirichlet/fedavg_ft_seed1.jsonl")
          .read_text().splitlines()]  # fmt: skip
  assert "adapted_client_accuracy_mean" in rows[-1] and len(rows) == 2
  summary = (tmp_path / "results" / "summary.md").read_text()
  assert "fedavg_ft (adapted)" in summary and "fedper" in summary and "pfedlia" in summary
  assert "shards: " in summary


def test_fedsnd_reproduction_script(tmp_path):
  overrides = [
    arg for item in TINY + ["model.name=mlp", f"out_dir={tmp_path}"] for arg in ("--set", item)
  ]
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "experiments/fedsnd/reproduce.py"),
      "--alphas",
      "0.5",
      "--seeds",
      "0",
      "--algorithms",
      "fedavg",
      "fedsnd",
      *overrides,
    ],
    capture_output=True,
    text=True,
    cwd=tmp_path,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
  assert [row["algorithm"] for row in rows] == ["fedavg", "fedsnd"]
  assert all("rounds_to_target" in row for row in rows)


def test_a_diverged_run_is_recorded_not_rerun(tmp_path):
  from fedjax_lab import grid, load_config

  config = load_config(None, TINY + ["local.learning_rate=1e6", f"out_dir={tmp_path}"])
  metrics, loaded = grid.run_or_load(config, None)
  assert grid.diverged(metrics) and not loaded
  assert (tmp_path / grid.DIVERGED_MARKER).exists()
  again, loaded = grid.run_or_load(config, None)
  assert grid.diverged(again) and loaded
  assert grid.last_evaluations(again, "global_accuracy") != grid.last_evaluations(
    again, "global_accuracy"
  )  # NaN
  from fedjax_lab.stats import describe

  assert describe([0.5, float("nan"), 0.7])["mean"] == 0.6


def test_a_finished_run_is_read_back_only_with_the_same_config(tmp_path):
  from fedjax_lab import grid, load_config
  from fedjax_lab.run_folder import RunFolderError

  config = load_config(None, TINY + [f"out_dir={tmp_path}"])
  first, loaded = grid.run_or_load(config, None)
  assert not loaded
  again, loaded = grid.run_or_load(config, None)
  assert loaded and again == first
  changed = load_config(None, TINY + [f"out_dir={tmp_path}", "local.learning_rate=0.02"])
  with pytest.raises(RunFolderError, match="local.learning_rate: 0.05 -> 0.02"):
    grid.run_or_load(changed, None)  # another config never replaces a run (issue 46)
  assert grid.run_or_load(config, None) == (first, True)


def test_a_finished_run_is_extended_to_more_rounds_from_its_checkpoint(tmp_path):
  from fedjax_lab import grid, load_config

  short = load_config(None, TINY + [f"out_dir={tmp_path}", "checkpoint_every=1"])
  first, _ = grid.run_or_load(short, None)
  longer = load_config(None, TINY + [f"out_dir={tmp_path}", "checkpoint_every=1", "rounds=3"])
  extended, loaded = grid.run_or_load(longer, None)
  assert not loaded and [row["round"] for row in extended] == [1, 2, 3]
  assert extended[:2] == first  # the recorded rows kept, timings included: resumed, not rerun


def test_wireless_reproduction_script(tmp_path):
  overrides = [
    arg
    for item in TINY + ["model.name=mlp", "data.max_client_examples=60"]
    for arg in ("--set", item)
  ]
  command = [sys.executable, str(ROOT / "experiments/wireless/reproduce.py"), *overrides]
  command += ["--seeds", "0", "--partitions", "dirichlet", "--runs", str(tmp_path / "runs")]
  done = subprocess.run(
    command + ["--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT
  )
  assert done.returncode == 0, done.stderr[-2000:]
  records = [
    json.loads(line) for line in (tmp_path / "out/per_seed.jsonl").read_text().splitlines()
  ]
  assert [r["variant"] for r in records] == ["adaptive_pruning", "fedrep_unpruned", "fedavg"]
  assert (tmp_path / "out/allocation.png").exists() and "Δacc pts" in done.stdout


def _committed(experiment: str):
  """``(reproduce module, per-seed records)`` of ``experiments/<experiment>``."""
  import importlib.util

  folder = ROOT / "experiments" / experiment
  spec = importlib.util.spec_from_file_location(f"{experiment}_reproduce", folder / "reproduce.py")
  reproduce = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(reproduce)
  lines = (folder / "results/per_seed.jsonl").read_text().splitlines()
  return reproduce, [json.loads(line) for line in lines]


def test_wireless_readme_tables_are_what_the_committed_results_give():
  """Every number of the README's tables is recomputed from results/per_seed.jsonl."""
  reproduce, records = _committed("wireless")
  readme = (ROOT / "experiments/wireless/README.md").read_text()
  for block in reproduce.summary_tables(records).split("```")[1::2]:
    assert block in readme


def test_privacy_reproduction_script(tmp_path):
  overrides = [
    arg
    for item in TINY + ["data.test_fraction=0", "aggregation.clip_norm=1"]
    for arg in ("--set", item)
  ]
  command = [sys.executable, str(ROOT / "experiments/privacy/reproduce.py"), *overrides]
  command += ["--seeds", "0", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path)]
  command += ["--compilation-cache", str(tmp_path / "jax_cache")]
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-2000:]
  records = [json.loads(line) for line in (tmp_path / "per_seed.jsonl").read_text().splitlines()]
  assert len(records) == 4 and "vs z=0" in done.stdout
  epsilons = [r["epsilon"] for r in records]
  assert epsilons[0] is None and epsilons[1] > epsilons[2] > epsilons[3]
  assert any((tmp_path / "jax_cache").iterdir())
  # the personalized part adds its records and keeps the main part's
  command[command.index("data.test_fraction=0")] = "data.test_fraction=0.3"
  done = subprocess.run(
    command + ["--part", "personalized"], capture_output=True, text=True, cwd=ROOT
  )
  assert done.returncode == 0, done.stderr[-2000:]
  records = [json.loads(line) for line in (tmp_path / "per_seed.jsonl").read_text().splitlines()]
  personalized = [r for r in records if r.get("part") == "personalized"]
  assert len(records) == 8 and len(personalized) == 4 and "FedAvg-FT" in done.stdout
  assert all(0 <= r["adapted_client_accuracy"] <= 1 for r in personalized)


def test_privacy_readme_tables_are_what_the_committed_results_give():
  reproduce, records = _committed("privacy")
  readme = (ROOT / "experiments/privacy/README.md").read_text()
  assert reproduce.summary_table(records) in readme
  assert reproduce.summary_table(records, "poisson") in readme
  assert reproduce.personalized_table(records) in readme


def _text_world_files(tmp_path) -> dict:
  """Plays and translated manual pages made locally (the code federation is this Python's
  standard library): the environment and overrides that point text_world at them."""
  import gzip

  plays = tmp_path / "plays"
  plays.mkdir()
  speech = "HAMLET.\nTo be, or not to be, that is the question.\n\n" * 100
  (plays / "hamlet.txt").write_text(speech)
  (plays / "tempest.txt").write_text(speech.replace("HAMLET", "ARIEL"))
  for language in ("de", "fr", "es"):
    (tmp_path / "man" / language / "man1").mkdir(parents=True)
    page = f".TH LS 1\n.SH NAME\nls \\- {language} \\fBlist\\fR text, caf\\('e\n" * 200
    (tmp_path / "man" / language / "man1" / "ls.1.gz").write_bytes(gzip.compress(page.encode()))
  return {"FEDJAX_LAB_MAN_DIR": str(tmp_path / "man"), "source_dir": str(plays)}


def test_worldlm_reproduction_script(tmp_path):
  files = _text_world_files(tmp_path)
  tiny = ["data.num_clients=14", "cohort_size=14", "rounds=2", "eval_every=1"]
  overrides = [
    arg for item in tiny + [f"data.source_dir={files['source_dir']}"] for arg in ("--set", item)
  ]
  command = [sys.executable, str(ROOT / "experiments/worldlm/reproduce.py"), *overrides]
  command += ["--seeds", "0", "--parts", "main", "--only", "worldlm"]
  command += ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
  env = {**os.environ, "FEDJAX_LAB_MAN_DIR": files["FEDJAX_LAB_MAN_DIR"]}
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
  assert done.returncode == 0, done.stderr[-2000:]
  records = [
    json.loads(line) for line in (tmp_path / "out/per_seed.jsonl").read_text().splitlines()
  ]
  assert [r["method"] for r in records] == ["worldlm"] and records[0]["perplexity/prose"] > 1
  assert "bits/byte" in done.stdout and (tmp_path / "out/tree_seed0.png").exists()
  assert (tmp_path / "out/attention.png").exists()


def test_robustness_reproduction_script(tmp_path):
  overrides = [arg for item in TINY + ["data.test_fraction=0"] for arg in ("--set", item)]
  command = [sys.executable, str(ROOT / "experiments/robustness/reproduce.py"), *overrides]
  command += ["--seeds", "0", "--attacks", "sign_flip", "--fractions", "0.25"]
  command += ["--rules", "mean", "median", "--runs", str(tmp_path / "runs")]
  done = subprocess.run(
    command + ["--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
  )
  assert done.returncode == 0, done.stderr[-2000:]
  records = [json.loads(line) for line in (tmp_path / "per_seed.jsonl").read_text().splitlines()]
  assert len(records) == 4 and {r["attack"] for r in records} == {None, "sign_flip"}
  assert "### sign_flip" in done.stdout and (tmp_path / "heatmap.png").exists()


def test_systems_reproduction_script(tmp_path):
  overrides = [arg for item in TINY + ["data.test_fraction=0"] for arg in ("--set", item)]
  command = [sys.executable, str(ROOT / "experiments/systems/reproduce.py"), *overrides]
  command += ["--seeds", "0", "--methods", "fedavg", "fednova"]
  command += ["--settings", "ideal", "dropout_30", "qsgd_4bit", "--runs", str(tmp_path / "runs")]
  done = subprocess.run(
    command + ["--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
  )
  assert done.returncode == 0, done.stderr[-2000:]
  records = [json.loads(line) for line in (tmp_path / "per_seed.jsonl").read_text().splitlines()]
  assert [(r["method"], r["setting"]) for r in records] == [
    ("fedavg", "ideal"), ("fedavg", "dropout_30"), ("fedavg", "qsgd_4bit"),
    ("fednova", "ideal"), ("fednova", "dropout_30"),
  ]  # fmt: skip
  assert all(r["simulated_hours"] > 0 for r in records)
  assert "vs fedavg ideal" in done.stdout and (tmp_path / "accuracy_vs_time.png").exists()


def test_asynchronous_systems_script(tmp_path):
  settings = TINY + ["data.test_fraction=0", "rounds=4", "algorithm.fedbuff.concurrency=8"]
  settings += ["algorithm.fedasync.concurrency=8"]
  overrides = [arg for item in settings for arg in ("--set", item)]
  command = [sys.executable, str(ROOT / "experiments/systems/asynchronous.py"), *overrides]
  command += ["--seeds", "0", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path)]
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-2000:]
  records = [json.loads(line) for line in (tmp_path / "per_seed.jsonl").read_text().splitlines()]
  assert sorted(r["method"] for r in records) == ["fedasync", "fedavg", "fedbuff"]
  assert "h to 80%" in done.stdout and (tmp_path / "accuracy_vs_time.png").exists()


def test_asynchronous_readme_table_is_what_the_committed_curves_give():
  import importlib.util

  path = ROOT / "experiments/systems/asynchronous.py"
  spec = importlib.util.spec_from_file_location("systems_asynchronous", path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  records = script.read_records(ROOT / "experiments/systems/results/asynchronous")
  assert len(records) == 15
  readme = (ROOT / "experiments/systems/README.md").read_text()
  assert script.summary_table(records) in readme


def test_systems_readme_table_is_what_the_committed_results_give():
  reproduce, records = _committed("systems")
  assert len(records) == SYSTEMS_RUNS
  readme = (ROOT / "experiments/systems/README.md").read_text()
  assert reproduce.summary_table(records) in readme
  assert reproduce.same_setting_table(records) in readme
  assert reproduce.effects_table(records) in readme


def test_systems_readme_byte_ratios_are_the_records():
  # Issue 46: "53x fewer bytes" where the records give 49.98x, "10.6x" for 10.66x.
  records = [
    json.loads(line)
    for line in (ROOT / "experiments/systems/results/per_seed.jsonl").read_text().splitlines()
  ]
  uploaded = lambda setting: np.mean(
    [r["megabytes_up"] for r in records if r["method"] == "fedavg" and r["setting"] == setting]
  )
  prose = " ".join((ROOT / "experiments/systems/README.md").read_text().split())
  ratio = lambda setting: f"{uploaded('ideal') / uploaded(setting):.1f}x"
  assert f"sending {ratio('qsgd_4bit')} and {ratio('qsgd_2bit')} fewer bytes" in prose
  assert f"at 10% ({ratio('top_k_10')} fewer bytes)" in prose
  assert f"at 1% ({ratio('top_k_1')} fewer)" in prose


def test_fedmr_grid_tables_are_what_the_committed_summaries_give():
  """The reduced CNN grid and the MLP grid, from their committed summaries (sample std)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("fedmr", ROOT / "experiments/fedmr/reproduce.py")
  reproduce = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(reproduce)
  readme = (ROOT / "experiments/fedmr/README.md").read_text()
  for folder in ("results", "results/mlp"):
    summary = json.loads((ROOT / "experiments/fedmr" / folder / "summary.json").read_text())
    assert summary["std"].startswith("sample")
    assert reproduce.readme_table(summary) in readme


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_fedmr_ablation_tables_are_what_the_committed_runs_give(model):
  ablation = _script("experiments/fedmr/ablation.py")
  results = ROOT / "experiments/fedmr/results" / f"ablation_{model}"
  readme = (ROOT / "experiments/fedmr/README.md").read_text()
  assert ablation.ablation_table(model, results) in readme


def test_fedsnd_text_ablation_table_is_what_the_committed_summaries_give():
  folder = ROOT / "experiments/fedsnd"
  reproduce = _script("experiments/fedsnd/reproduce.py")
  changes = {
    name: json.loads((folder / "results/text_ablation" / f"{name}.json").read_text())
    for name in reproduce.TEXT_ABLATION
  }
  text = json.loads((folder / "results/text_summary.json").read_text())
  table = reproduce.text_ablation_table(text, changes)
  assert table in (folder / "README.md").read_text()


def test_fedsnd_30_round_tables_are_what_the_committed_summaries_give():
  import importlib.util

  folder = ROOT / "experiments/fedsnd"
  spec = importlib.util.spec_from_file_location("fedsnd", folder / "reproduce.py")
  reproduce = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(reproduce)
  load = lambda name: json.loads((folder / "results" / f"{name}_summary.json").read_text())
  readme = (folder / "README.md").read_text()
  assert reproduce.image_table([load("image_alpha0.1"), load("image_alpha0.5")]) in readme
  assert reproduce.text_table(load("text")) in readme


def test_worldlm_readme_tables_are_what_the_committed_results_give():
  reproduce, records = _committed("worldlm")
  readme = (ROOT / "experiments/worldlm/README.md").read_text()
  for table in (reproduce.main_table, reproduce.dp_table, reproduce.keys_table):
    assert table(records) in readme
  lines = (ROOT / "experiments/worldlm/results/budget400/per_seed.jsonl").read_text().splitlines()
  assert reproduce.main_table([json.loads(line) for line in lines]) in readme


def test_worldlm_temperature_table_is_what_the_committed_tuning_gives():
  import importlib.util

  folder = ROOT / "experiments/worldlm"
  spec = importlib.util.spec_from_file_location("worldlm_tune", folder / "tune.py")
  tune = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tune)
  lines = (folder / "results/tuning_temperature.jsonl").read_text().splitlines()
  table = tune.temperature_table([json.loads(line) for line in lines])
  indented = "\n".join("  " + line for line in table.splitlines())  # inside a list item
  assert indented in (folder / "README.md").read_text()


def test_worldlm_speed_table_is_what_the_committed_benchmark_gives():
  benchmark = _script("benchmarks/worldlm_tree.py")
  record = json.loads((ROOT / "benchmarks/results/worldlm_tree.json").read_text())
  assert benchmark.table(record) in (ROOT / "experiments/worldlm/README.md").read_text()


def test_robustness_readme_tables_are_what_the_committed_results_give():
  reproduce, records = _committed("robustness")
  readme = (ROOT / "experiments/robustness/README.md").read_text()
  assert len(records) == 288
  for block in reproduce.summary_tables(records).split("```")[1::2]:
    assert block in readme


def test_every_published_table_row_config_is_valid():
  from fedjax_lab import load_config

  paths = sorted(ROOT.glob("experiments/*/configs/*.json"))
  assert len(paths) >= 20
  for path in paths:
    load_config(str(path))


def _script(path: str):
  """The module of the experiment script at ``path`` (relative to the repository)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem + "_script", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  "script, readme, least_runs",
  [
    ("experiments/fedmr/official.py", "experiments/fedmr/README.md", 6),
    ("experiments/fedsnd/converged.py", "experiments/fedsnd/README.md", 60),
  ],
)
def test_readme_tables_are_what_the_committed_per_run_metrics_give(script, readme, least_runs):
  """Every results folder of the script (``RESULTS``, and each of ``RESULTS_BY_ROUNDS`` where
  it has one) gives the tables its README shows; ``RESULTS`` holds at least ``least_runs``."""
  module = _script(script)
  assert sum(map(len, module.grid.read_run_metrics(module.RESULTS).values())) >= least_runs
  text = (ROOT / readme).read_text()
  for results in {module.RESULTS, *getattr(module, "RESULTS_BY_ROUNDS", {}).values()}:
    runs = module.grid.read_run_metrics(results)
    for block in module.summary_tables(runs).split("```")[1::2] if runs else []:
      assert block in text


@pytest.mark.parametrize(
  "script, rounds, least_compared",
  [("experiments/fedsnd/converged.py", 300, 3), ("experiments/fedmr/official.py", 500, 2)],
)
def test_longer_runs_extend_the_100_round_runs_exactly(script, rounds, least_compared):
  """Same config and seed but ``rounds``: the first 100 rounds are the same numbers (the runs
  are deterministic, and nothing in a round depends on the run's length)."""
  module = _script(script)
  short, long = (module.grid.read_run_metrics(module.RESULTS_BY_ROUNDS[r]) for r in (100, rounds))
  compared = 0
  for key, by_seed in long.items():
    for seed, metrics in by_seed.items():
      if seed not in short.get(key, {}):  # a seed the 100-round budget did not run
        continue
      first_100 = [r for r in metrics if r["round"] <= 100]
      evals = [(r["round"], r["global_accuracy"]) for r in first_100 if "global_accuracy" in r]
      reference = short[key][seed]
      assert evals == [
        (r["round"], r["global_accuracy"]) for r in reference if "global_accuracy" in r
      ]
      compared += 1
  assert compared >= least_compared


def test_pfedlia_readme_tables_are_what_the_committed_per_run_metrics_give():
  module = _script("experiments/pfedlia/reproduce.py")
  runs = module.read_runs()
  assert sum(len(by_seed) for by_seed in runs.values()) >= PFEDLIA_RUNS
  text = (ROOT / "experiments/pfedlia/README.md").read_text()
  for block in module.summary_tables(runs).split("```")[1::2]:
    assert block in text


def test_personalized_readme_tables_are_what_the_committed_runs_give():
  module = _script("experiments/personalized/reproduce.py")
  runs = module.read_runs(module.RESULTS)
  assert (
    sum(len(by) for (_, name), by in runs.items() if name in module.METHODS) >= PERSONALIZED_RUNS
  )
  text = (ROOT / "experiments/personalized/README.md").read_text()
  for block in module.summary_tables(runs).split("```")[1::2]:
    assert block in text


@pytest.mark.parametrize(
  "script, readme",
  [
    ("experiments/pfedlia/tune_cfl.py", "experiments/pfedlia/README.md"),
    ("experiments/personalized/tune.py", "experiments/personalized/README.md"),
    ("experiments/fedsnd/server_sweep.py", "experiments/fedsnd/README.md"),
  ],
)
def test_tuning_tables_in_readmes_are_what_the_committed_records_give(script, readme):
  """Each tuning script's committed records give the table its README shows."""
  module = _script(script)
  records = module.grid.read_records(module.RESULTS)
  assert len(records) == len(module.CANDIDATES) * len(module.TUNING_SEEDS)
  assert module.tuning_table(records) in (ROOT / readme).read_text()


def test_pfedlia_privacy_readme_table_is_what_the_committed_results_give():
  privacy = _script("experiments/pfedlia/privacy.py")
  lines = (ROOT / "experiments/pfedlia/results/privacy/per_seed.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert len(records) == 18
  readme = (ROOT / "experiments/pfedlia/README.md").read_text()
  assert privacy.privacy_table(records) in readme
