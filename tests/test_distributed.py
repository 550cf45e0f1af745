"""Two processes under ``jax.distributed`` (CPU collectives over gloo) run one federation with
the cohort split over both, each holding and reading only its own clients, and get the
single-process run's metrics; only process 0 writes metrics (and orbax writes the replicated
checkpoint once)."""

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts several processes (make test-fast skips it)

WORKER = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
process, port, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if process >= 0:
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process)
from fedjax_lab import load_config, run
from fedjax_lab.data.ragged import ProcessShard
gathered, gather = [], ProcessShard.gather
def recorded_gather(self, ids):
  gathered.extend(int(k) for k in ids)
  return gather(self, ids)
ProcessShard.gather = recorded_gather
devices = 2 if process >= 0 else 1
config = load_config(None, [
  "data.source=digits", "data.num_clients=10", "data.dirichlet.min_examples=10", "cohort_size=6",
  "rounds=4", "eval_every=2", "checkpoint_every=2", "execution.strategy=vmap",
  "local.batch_size=16", f"execution.devices={devices}", f"out_dir={out_dir}"])
result = run(config, progress=False)
print(json.dumps({"process": process, "devices": jax.device_count(),
                  "gathered": sorted(set(gathered)),
                  "metrics": [{k: v for k, v in r.items() if k != "round_seconds"}
                              for r in result.metrics]}))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _runs(root):
  """The federation run by two processes (into ``root/two``) and by one (``root/one``): the two
  processes' printed results and the single process's."""
  script = root / "worker.py"
  script.write_text(WORKER)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  port = str(_free_port())
  workers = [
    subprocess.Popen(
      [sys.executable, str(script), str(p), port, str(root / "two")],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
    )
    for p in (0, 1)
  ]  # fmt: skip
  single = subprocess.run(
    [sys.executable, str(script), "-1", port, str(root / "one")],
    env=env, capture_output=True, text=True, cwd=root,
  )  # fmt: skip
  outputs = [w.communicate(timeout=600) for w in workers]
  for worker, (_, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]
  parsed = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  return parsed, json.loads(single.stdout.strip().splitlines()[-1])


def test_two_processes_compute_what_one_computes_and_only_process_zero_writes(tmp_path):
  (first, second), single = _runs(tmp_path)
  assert first["devices"] == second["devices"] == 2 and single["devices"] == 1
  # Each process read only its own clients (k % 2), and between them every client (training
  # cohorts and client test splits).
  assert all(k % 2 == 0 for k in first["gathered"]) and all(k % 2 for k in second["gathered"])
  assert sorted(first["gathered"] + second["gathered"]) == list(range(10))
  assert single["gathered"] == []
  assert first["metrics"] == second["metrics"]  # both processes see the same metrics
  for two, one in zip(first["metrics"], single["metrics"], strict=True):
    assert two.keys() == one.keys()
    for key in one:
      assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
  rows = [
    json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
  ]
  assert [r["round"] for r in rows] == [1, 2, 3, 4]
  assert rows[-1]["train_loss"] == first["metrics"][-1]["train_loss"]
  assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["2", "4"]
