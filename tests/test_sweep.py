"""``fedjax-lab sweep`` (``sweep.py``): the grid's cells and seeds, one folder a run, finished
runs read back and an interrupted one resumed, and a summary whose numbers are the runs'
(means, sample std, paired differences against the baseline cell)."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from fedjax_lab import plots, run_folder, stats, sweep
from fedjax_lab.cli import main

TINY = [
  "data.source=digits",
  "data.num_clients=8",
  "data.test_fraction=0.2",
  "cohort_size=4",
  "rounds=4",
  "eval_every=2",
  "checkpoint_every=2",
  "logging.writers=[]",
]


def test_grid_values_keep_bracketed_lists_whole():
  axis = sweep.parse_axis("model.mlp.hidden=[100,100],[200]")
  assert axis == sweep.Axis("model.mlp.hidden", ("[100,100]", "[200]"))
  cells = sweep.grid_cells([sweep.Axis("a.x", ("1", "2")), sweep.Axis("b.x", ("u", "v"))])
  short = sweep.short_names([sweep.Axis("a.x", ()), sweep.Axis("b.x", ())])
  assert [c.name(short) for c in cells] == [
    "a.x=1,b.x=u",
    "a.x=1,b.x=v",
    "a.x=2,b.x=u",
    "a.x=2,b.x=v",
  ]
  assert sweep.parse_seeds("0-3") == [0, 1, 2, 3] and sweep.parse_seeds("4,1") == [4, 1]


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--grid", "algorithm.name"], "--grid must be field=value1,value2"),
    (["--grid", "seed=1,1"], "distinct values"),
    (["--seeds", "2-1"], "--seeds must be A-B or a list"),
    (["--grid", "algorithm.name=fedavg,fedprox", "--baseline", "algorithm.name=scaffold"],
     "--baseline must be a grid field and one of its values (algorithm.name=fedavg|fedprox)"),
    (["--grid", "algorithm.name=fedavg,nope"], "cell name=nope, seed 0: algorithm.name must be"),
    (["--jobs", "0"], "--jobs must be >= 1"),
  ],
)  # fmt: skip
def test_a_bad_sweep_is_one_line_before_any_run(tmp_path, capsys, argv, message):
  assert main(["sweep", *TINY, "--out", str(tmp_path / "s"), *argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("fedjax-lab: ValueError: ") and message in err and err.count("\n") == 1
  assert not (tmp_path / "s").exists()


def test_summary_tables_pair_each_cell_with_its_baseline_by_seed():
  values = {("fedavg", "0.1"): [0.5, 0.6, 0.7], ("fedprox", "0.1"): [0.52, 0.61, 0.75]}
  values[("fedavg", "1")] = [0.8, 0.8, 0.9]
  per_seed = [
    {"grid": {"algorithm.name": name, "data.dirichlet.alpha": alpha}, "seed": seed, "acc": value}
    for (name, alpha), seeds in values.items()
    for seed, value in enumerate(seeds)
  ]
  text = sweep.summary_tables(per_seed, ["acc"], ("algorithm.name", "fedavg"), last=1)
  expected = stats.format_paired([0.52, 0.61, 0.75], [0.5, 0.6, 0.7], digits=4)
  assert expected in text and "no baseline cell" not in text and text.count("baseline") == 2
  spread = stats.describe(values[("fedprox", "0.1")])
  assert f"{spread['mean']:.4f}  {spread['std']:.4f}  3" in text
  alone = [r for r in per_seed if r["grid"]["algorithm.name"] == "fedprox"]
  alone += [{**per_seed[-1], "grid": {"algorithm.name": "fedavg", "data.dirichlet.alpha": "9"}}]
  assert "no baseline cell" in sweep.summary_tables(alone, ["acc"], ("algorithm.name", "fedavg"), 1)


@pytest.mark.slow
def test_a_sweep_of_two_methods_two_alphas_three_seeds_runs_resumes_and_summarizes(
  tmp_path, capsys
):
  out = tmp_path / "sweep"
  argv = ["sweep", *TINY, "--grid", "algorithm.name=fedavg,fedprox",
          "data.dirichlet.alpha=0.1,1.0", "--seeds", "0-2", "--baseline",
          "algorithm.name=fedavg", "--out", str(out)]  # fmt: skip
  assert main(argv) == 0
  first = capsys.readouterr().out
  assert "sweep: 4 cells x 3 seeds" in first and first.count("s)\n") == 12
  runs = sorted(out.glob("name=*/seed*"))
  assert len(runs) == 12 and (out / "name=fedprox,alpha=1.0/seed2/metrics.jsonl").exists()
  config = json.loads((out / "name=fedprox,alpha=1.0/seed2/config.json").read_text())
  assert (config["seed"], config["data"]["seed"], config["algorithm"]["name"]) == (2, 2, "fedprox")
  summary = out / "summary"
  per_seed = [json.loads(line) for line in (summary / "per_seed.jsonl").read_text().splitlines()]
  for record in per_seed:  # each record is its run's last evaluation
    folder = (
      out
      / f"name={record['grid']['algorithm.name']},alpha={record['grid']['data.dirichlet.alpha']}"
    )
    rows = run_folder.read_metrics(folder / f"seed{record['seed']}")
    assert record["global_accuracy"] == rows[-1]["global_accuracy"]
  fedprox = [r["global_accuracy"] for r in per_seed if r["grid"]["algorithm.name"] == "fedprox"
             and r["grid"]["data.dirichlet.alpha"] == "0.1"]  # fmt: skip
  fedavg = [r["global_accuracy"] for r in per_seed if r["grid"]["algorithm.name"] == "fedavg"
            and r["grid"]["data.dirichlet.alpha"] == "0.1"]  # fmt: skip
  tables = (summary / "summary.md").read_text()
  assert stats.format_paired(fedprox, fedavg, digits=4) in tables
  assert all((summary / f"{m}.png").stat().st_size > 0 for m in sweep.DEFAULT_METRICS)

  # One run interrupted after its checkpoint at round 2: the same command resumes it and
  # reads the 11 others back; the resumed run ends where the uninterrupted one did.
  interrupted = out / "name=fedavg,alpha=0.1/seed1"
  rows = run_folder.read_metrics(interrupted)
  run_folder.write_metrics(interrupted, rows[:3])
  shutil.rmtree(interrupted / "checkpoints" / "4")
  assert main(argv) == 0
  again = capsys.readouterr().out
  assert again.count("(read back)") == 11
  assert run_folder.read_metrics(interrupted)[-1]["global_accuracy"] == pytest.approx(
    rows[-1]["global_accuracy"], abs=1e-6
  )
  assert (summary / "summary.md").read_text() == tables

  # The report of the sweep: one entry per cell (its seeds together) and the sweep's tables.
  assert main(["report", str(out), "--out", str(tmp_path / "report.html")]) == 0
  assert "report of 4 entries" in capsys.readouterr().out
  page = (tmp_path / "report.html").read_text()
  assert "name=fedprox,alpha=1.0" in page and "paired diff vs name=fedavg" in page

  # --summarize recomputes the tables from the committed records alone.
  shutil.rmtree(out / "name=fedavg,alpha=1.0")
  assert (
    main(["sweep", "--summarize", "--out", str(out), "--baseline", "algorithm.name=fedavg"]) == 0
  )
  assert (summary / "summary.md").read_text() == tables


def test_curves_band_is_the_min_and_max_over_seeds(tmp_path, monkeypatch):
  drawn = {}

  class Axes:
    def plot(self, rounds, mean, **kw):
      drawn["mean"] = np.asarray(mean)

    def fill_between(self, rounds, low, high, **kw):
      drawn["band"] = (np.asarray(low), np.asarray(high))

    def get_legend_handles_labels(self):
      return [], []

    def __getattr__(self, name):
      return lambda *a, **k: None

  class Figure:
    def __getattr__(self, name):
      return lambda *a, **k: None

  class Pyplot:
    def subplots(self, *a, **k):
      return Figure(), [[Axes()]]

    def close(self, fig):
      pass

  monkeypatch.setattr(plots, "pyplot", Pyplot)
  curves = [{"grid": {"algorithm.name": "fedavg"}, "seed": s,
             "rows": [{"round": 2, "acc": v}, {"round": 4, "acc": v + 0.1}]}
            for s, v in enumerate([0.2, 0.4, 0.3])]  # fmt: skip
  panels = sweep.curve_panels(curves, "acc", "algorithm.name")
  assert list(panels) == ["acc"] and list(panels["acc"]) == ["name=fedavg"]
  plots.plot_curves(panels, pathlib.Path(tmp_path / "x.png"), "acc")
  np.testing.assert_allclose(drawn["mean"], [0.3, 0.4])
  np.testing.assert_allclose(drawn["band"][0], [0.2, 0.3])
  np.testing.assert_allclose(drawn["band"][1], [0.4, 0.5])


@pytest.mark.slow
def test_reproduction_grids_run_as_sweeps(tmp_path, capsys):
  from fedjax_lab import grid

  config = tmp_path / "base.json"
  base = {"data": {"source": "digits", "num_clients": 8}, "rounds": 2, "cohort_size": 4}
  config.write_text(json.dumps({**base, "eval_every": 1, "checkpoint_every": 0}))
  variants = {"fedavg": ("fedavg", {}), "prox": ("fedprox", {"mu": 0.1})}
  results = tmp_path / "results"
  grid.run_alpha_seed_grid(str(config), variants, [0.5], [0, 1], str(tmp_path / "runs"), results)
  assert sorted(p.name for p in results.glob("*_seed*.jsonl")) == [
    f"{name}_alpha0.5_seed{seed}.jsonl" for name in ("fedavg", "prox") for seed in (0, 1)
  ]
  walls = grid.read_metrics_file(results / "wall_times.jsonl")
  assert sorted(w["run"] for w in walls) == [
    f"{name}_alpha0.5_seed{seed}" for name in ("fedavg", "prox") for seed in (0, 1)
  ]
  assert all(w["wall_seconds"] > 0 and not w["resumed"] and w["machine"]["jax"] for w in walls)
  stored = json.loads((tmp_path / "runs/alpha=0.5,method=prox/seed1/config.json").read_text())
  assert stored["algorithm"]["fedprox"]["mu"] == 0.1 and stored["data"]["seed"] == 1
  capsys.readouterr()
  curves, read_back = grid.alpha_seed_curves(
    str(config), [], variants, [0.5], [0, 1], tmp_path / "runs"
  )
  assert read_back == 4 and len(curves[(0.5, "prox")]) == 2
  saved = grid.read_metrics_file(results / "prox_alpha0.5_seed1.jsonl")
  assert curves[(0.5, "prox")][1] == saved


# --- A sweep never loses a run (docs/reliability.md, round 4: findings 1-4 and 13) ---


def _sweep(out, *argv):
  return main(["sweep", *TINY, "--grid", "algorithm.name=fedavg,fedprox", "--out", str(out), *argv])


def _state(out: pathlib.Path) -> dict:
  """Every run file's bytes under ``out`` but the summary and the compilation cache."""
  return {
    str(path.relative_to(out)): path.read_bytes()
    for path in sorted(out.rglob("*"))
    if path.is_file() and "summary" not in path.parts and ".jax_cache" not in path.parts
  }


@pytest.mark.slow
def test_a_sweep_refuses_a_folder_holding_runs_of_another_config_and_keeps_them(tmp_path, capsys):
  out = tmp_path / "s"
  assert _sweep(out, "rounds=4") == 0
  kept = _state(out)
  capsys.readouterr()
  # Fewer rounds (the 30 then 20) and another learning rate: refused, nothing touched.
  for change, differs in [("rounds=2", "rounds: 4 -> 2"), ("local.learning_rate=0.5", "0.5")]:
    assert _sweep(out, "rounds=4", change) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cell name=fedavg, seed 0:" in err and differs in err
    assert "holds another run" in err and _state(out) == kept
  # More rounds extends the same runs; the same command again reads them back.
  assert _sweep(out, "rounds=6") == 0
  assert run_folder.read_metrics(out / "name=fedprox" / "seed0")[-1]["round"] == 6
  assert _sweep(out, "rounds=6") == 0
  assert capsys.readouterr().out.count("(read back)") == 2


def test_run_or_load_never_replaces_another_run(tmp_path):
  from fedjax_lab.config import load_config
  from fedjax_lab.grid import run_or_load

  folder = tmp_path / "run"
  folder.mkdir()
  stored = load_config(None, [*TINY, f"out_dir={folder}"])
  (folder / run_folder.CONFIG_FILE).write_text(json.dumps(stored.to_dict()))
  (folder / run_folder.METRICS_FILE).write_text('{"round": 4, "global_accuracy": 0.5}\n')
  other = load_config(None, [*TINY, f"out_dir={folder}", "algorithm.name=fedprox"])
  with pytest.raises(run_folder.RunFolderError, match="algorithm.name: 'fedavg' -> 'fedprox'"):
    run_or_load(other, None)
  assert run_folder.read_metrics(folder) == [{"round": 4, "global_accuracy": 0.5}]


def test_a_sweep_folder_takes_one_sweep_at_a_time(tmp_path, capsys):
  out = tmp_path / "s"
  held = run_folder.lock_folder(out, sweep.SWEEP_LOCK, "sweep")  # another sweep's
  try:
    assert _sweep(out) == 2
  finally:
    held.close()
  err = capsys.readouterr().err
  assert "is in use by another sweep (process" in err and err.count("\n") == 1
  assert not list(out.glob("name=*"))


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--grid", "seed=1,2"], "seed is set by the sweep for each run"),
    (["--grid", "data.seed=1,2"], "use --seeds instead of setting data.seed"),
    (["--grid", "out_dir=a,b"], "use --out instead of setting out_dir"),
    (["out_dir=somewhere"], "use --out instead of setting out_dir"),
    (["--grid", "algorithm.fedprox.mu=0.1,0.2"], "cells mu=0.1 and mu=0.2 are the same run"),
    (["--grid", "local.learning_rate=0.1,0.10"],
     "cells learning_rate=0.1 and learning_rate=0.10 are the same run"),
  ],
)  # fmt: skip
def test_sweep_cells_that_are_one_run_are_refused(tmp_path, capsys, argv, message):
  assert main(["sweep", *TINY, "--out", str(tmp_path / "s"), *argv]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1
  assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_an_unknown_metric_is_refused_not_reported_as_divergence(tmp_path, capsys):
  assert main(["sweep", *TINY, "--out", str(tmp_path / "s"), "--metrics", "nosuch"]) == 2
  err = capsys.readouterr().err
  assert "--metrics: 'nosuch' is not a metric of the runs" in err and "global_accuracy" in err
  assert "diverged" not in err and err.count("\n") == 1


def _children(pid: int) -> list[int]:
  found = []
  for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
      fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == pid:
      found.append(int(stat.parent.name))
  return found


def _alive(pid: int) -> bool:
  try:
    state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
  except OSError:
    return False
  return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_sweep_workers_die_with_the_sweep(tmp_path, signal_name):
  import os
  import signal
  import subprocess
  import sys
  import time

  out = tmp_path / "s"
  command = [sys.executable, "-m", "fedjax_lab.cli", "sweep", *TINY, "rounds=400",
             "checkpoint_every=1", "--grid", "algorithm.name=fedavg,fedprox", "--jobs", "2",
             "--out", str(out)]  # fmt: skip
  sweep_process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 240
  while not list(out.glob("name=*/seed0/checkpoints/*")) and time.monotonic() < deadline:
    time.sleep(0.5)
  workers = [p for p in _children(sweep_process.pid) if _alive(p)]
  assert workers, "the sweep started no workers"
  os.kill(sweep_process.pid, getattr(signal, signal_name))
  _, err = sweep_process.communicate(timeout=120)
  deadline = time.monotonic() + 30
  while any(_alive(p) for p in workers) and time.monotonic() < deadline:
    time.sleep(0.5)
  assert not any(_alive(p) for p in workers)
  if signal_name == "SIGTERM":
    line = next(x for x in err.decode().splitlines() if x.startswith("fedjax-lab:"))
    assert sweep_process.returncode == 2 and "SweepInterrupted: interrupted: 0 of 2 runs" in line
    assert "resume from their checkpoints (name=" in line
