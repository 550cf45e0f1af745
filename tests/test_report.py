"""``fedjax-lab report`` (``report.py``): one offline HTML page comparing runs or a sweep's
cells, checked by rendering it in headless Chromium (``make test`` installs Debian's package):
the page's tables and inline plots are in the rendered DOM and the screenshot is not blank."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from fedjax_lab import report, run_folder
from fedjax_lab.cli import main

TINY = [
  "--no-progress",
  "data.source=digits",
  "data.num_clients=6",
  "data.test_fraction=0.2",
  "cohort_size=3",
  "rounds=4",
  "eval_every=2",
  "checkpoint_every=0",
  "logging.writers=[]",
]
CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
]


def _run_folder(path, name, accuracy_rows, clients):
  path.mkdir(parents=True)
  run_folder.write_config(path, {"algorithm": {"name": name}, "rounds": 4, "out_dir": str(path)})
  run_folder.write_metrics(path, accuracy_rows)
  run_folder.write_client_accuracy(path, 4, {"client_accuracy": np.asarray(clients)})


def test_the_page_names_what_differs_and_averages_each_entrys_runs(tmp_path):
  rows = lambda final: [
    {"round": 2, "global_accuracy": 0.1},
    {"round": 4, "global_accuracy": final},
  ]
  _run_folder(tmp_path / "a", "fedavg", rows(0.5), [0.2, 0.8])
  _run_folder(tmp_path / "b", "fedprox", rows(0.7), [0.4, np.nan])
  entries, tables = report.collect([tmp_path / "a", tmp_path / "b"])
  differ, shared = report.config_split(entries)
  assert differ == ["algorithm.name"] and shared == {"rounds": 4} and tables == []
  final = report.final_rows(entries)
  assert [(r["run"], r["global_acc"], r["client_acc_mean"]) for r in final] == [
    ("a", "0.5000", "none"),
    ("b", "0.7000", "none"),
  ]
  page = report.render(entries, tables, "t")
  assert page.count("<svg") == 2 and "<td>fedprox</td>" in page and "<script" not in page
  with pytest.raises(ValueError, match="neither a run folder"):
    report.collect([tmp_path])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium: `make browser`")
def test_a_report_of_two_runs_renders_its_tables_and_plots_in_chromium(tmp_path, capsys):
  for name in ("fedavg", "fedprox"):
    assert main([*TINY, f"algorithm.name={name}", f"out_dir={tmp_path / name}"]) == 0
  page = tmp_path / "report.html"
  runs = [str(tmp_path / "fedavg"), str(tmp_path / "fedprox")]
  assert main(["report", *runs, "--out", str(page)]) == 0
  assert "report of 2 entries" in capsys.readouterr().out
  browser = [shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
  url = page.resolve().as_uri()
  dom = subprocess.run(
    [*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
  ).stdout
  assert dom.count("<svg") == 2 and "Per-client accuracy" in dom
  assert "<td>fedprox</td>" in dom and "<td>fedavg</td>" in dom  # the configuration table
  final = json.loads((tmp_path / "fedprox" / "metrics.jsonl").read_text().splitlines()[-1])
  assert f"<td>{final['global_accuracy']:.4f}</td>" in dom  # the final-metrics table
  shot = tmp_path / "report.png"
  subprocess.run(
    [*browser, "--window-size=1200,1600", f"--screenshot={shot}", url],
    capture_output=True,
    timeout=120,
    check=True,
  )
  from matplotlib.image import imread

  pixels = imread(shot)
  assert pixels.shape[:2] == (1600, 1200)
  assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50  # drawn, not blank
