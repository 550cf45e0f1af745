"""Hooks (``fedjax_lab/hooks.py``): user code after every round, from Python and from a
``--plugin`` file; an early stop is recorded and honoured on resume; a resumed run with hooks
equals an uninterrupted one."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from fedjax_lab import hooks, load_config, run, run_folder
from fedjax_lab.cli import main

pytestmark = pytest.mark.slow  # whole runs (make test-fast skips them)

TINY = [
  "data.source=digits",
  "data.num_clients=6",
  "data.dirichlet.min_examples=15",
  "cohort_size=3",
  "local.batch_size=16",
  "local.learning_rate=0.1",
  "eval_every=1",
  "checkpoint_every=2",
  "logging.writers=[]",
]


def _config(out, *overrides):
  return load_config(None, [*TINY, f"out_dir={out}", *overrides])


def test_early_stopping_from_python_is_recorded_and_honoured_on_resume(tmp_path, capsys):
  out = tmp_path / "run"
  full = run(_config(tmp_path / "full", "rounds=12"), progress=False).metrics
  target = full[4]["global_accuracy"]  # reached at round 5 at the latest
  first = next(r["round"] for r in full if r["global_accuracy"] >= target)
  stop = hooks.EarlyStopping("global_accuracy", target)
  result = run(_config(out, "rounds=12"), progress=False, hooks=[stop])
  assert [r["round"] for r in result.metrics] == list(range(1, first + 1))
  assert result.metrics == [
    {**r, "round_seconds": m["round_seconds"]} for r, m in zip(full, result.metrics)
  ]
  recorded = json.loads((out / run_folder.STOP_FILE).read_text())
  assert recorded["round"] == first and "global_accuracy" in recorded["reason"]
  assert f"a hook stopped the run after round {first} of 12" in capsys.readouterr().err
  again = run(_config(out, "rounds=12"), progress=False, resume=True)  # no hook given
  assert "nothing to do: a hook stopped" in capsys.readouterr().err
  assert again.metrics == result.metrics


def test_keep_best_and_a_custom_metric_survive_a_resume_bit_identically(tmp_path):
  def make_hooks():
    norm = lambda event: {
      "params_norm": float(sum(np.sum(np.square(x)) for x in jax.tree.leaves(event.state.params)))
    }
    return [hooks.KeepBest("global_accuracy"), hooks.EveryRounds(2, norm)]

  straight = run(_config(tmp_path / "straight", "rounds=6"), progress=False, hooks=make_hooks())
  resumed_dir = tmp_path / "resumed"
  run(_config(resumed_dir, "rounds=4"), progress=False, hooks=make_hooks())
  resumed = run(_config(resumed_dir, "rounds=6"), progress=False, resume=True, hooks=make_hooks())
  strip = lambda rows: [{k: v for k, v in r.items() if k != "round_seconds"} for r in rows]
  assert strip(resumed.metrics) == strip(straight.metrics)
  assert [r["round"] for r in straight.metrics if "params_norm" in r] == [2, 4, 6]
  best = max(straight.metrics, key=lambda r: r["global_accuracy"])
  for folder in (tmp_path / "straight", resumed_dir):
    kept = np.load(folder / run_folder.BEST_FILE)
    assert int(kept["round"]) == best["round"] and float(kept["value"]) == best["global_accuracy"]
  a, b = (
    np.load(tmp_path / "straight" / run_folder.BEST_FILE),
    np.load(resumed_dir / run_folder.BEST_FILE),
  )
  assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_plugin_file_installs_a_hook_for_the_cli(tmp_path, capsys):
  plugin = tmp_path / "stop_early.py"
  plugin.write_text(
    "from fedjax_lab import hooks\n"
    "hooks.install(hooks.EarlyStopping('global_accuracy', 0.0))\n"  # reached at round 1
  )
  args = [*TINY, "rounds=5", f"out_dir={tmp_path / 'run'}", "--plugin", str(plugin)]
  try:
    assert main(args) == 0
  finally:
    hooks._INSTALLED.clear()
  assert "a hook stopped the run after round 1 of 5" in capsys.readouterr().err
  assert run_folder.read_metrics(tmp_path / "run")[-1]["round"] == 1
  resume = [*TINY, "rounds=5", "--config", str(tmp_path / "run" / "config.json"), "--resume"]
  assert main(resume) == 0
  assert "nothing to do: a hook stopped" in capsys.readouterr().err


def test_hooks_refuse_what_is_not_a_hook():
  with pytest.raises(TypeError, match="a hook needs an on_round_end"):
    hooks.install(object())
  with pytest.raises(ValueError, match="EarlyStopping.mode must be 'max' or 'min'"):
    hooks.EarlyStopping("global_accuracy", 0.5, mode="up")


def test_user_hooks_run_between_the_runners_own_and_are_closed_on_an_error(tmp_path):
  class Probe(hooks.Hook):
    def __init__(self):
      self.started, self.seen, self.closed = [], [], False

    def on_round_start(self, round_number):
      self.started.append(round_number)

    def on_round_end(self, event):
      # After the runner's evaluation and privacy accounting, before the row is written.
      written = run_folder.read_metrics(event.out_dir)
      self.seen.append((event.round, "global_accuracy" in event.row, len(written)))
      assert set(event.clients) == {"client_ids", "client_accuracy"}
      assert "privacy_epsilon" in event.row
      event.row["probe"] = event.round
      if event.round == 2:
        raise RuntimeError("a hook failed")

    def close(self):
      self.closed = True

  probe = Probe()
  out = tmp_path / "run"
  config = _config(
    out,
    "rounds=4",
    "data.test_fraction=0.2",
    "privacy.noise_multiplier=0.5",
    "aggregation.clip_norm=1.0",
    "algorithm.weighting=uniform",
  )
  with pytest.raises(RuntimeError, match="a hook failed"):
    run(config, progress=False, hooks=[probe])
  assert probe.started == [1, 2] and probe.closed
  assert probe.seen == [(1, True, 0), (2, True, 1)]
  assert [r["probe"] for r in run_folder.read_metrics(out)] == [1]  # round 1 kept, with its metric


def test_a_method_that_sends_nothing_is_not_said_to_have_lost_every_client(tmp_path, capsys):
  run(_config(tmp_path / "local", "rounds=2", "algorithm.name=local"), progress=False)
  assert "no client's result reached the server" not in capsys.readouterr().err
  lost = ["systems.compute_median=100", "systems.availability=0.0001", "rounds=2"]
  run(_config(tmp_path / "lost", *lost), progress=False)
  assert "no client's result reached the server in 2 rounds" in capsys.readouterr().err
