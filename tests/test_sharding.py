"""The cohort axis sharded over 4 (fake) CPU devices computes what one device computes.

XLA fixes the number of host devices when it starts, so the runs happen in a subprocess with
``--xla_force_host_platform_device_count=4``."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # several simulated devices (make test-fast skips it)

RUNS = r"""
import json, sys
import jax, numpy as np
from fedjax_lab import load_config
from fedjax_lab.runner import run
assert jax.device_count() == 4, jax.devices()
base = ["data.source=digits", "data.num_clients=12", "data.dirichlet.min_examples=5",
        "cohort_size=8",
        "rounds=3", "eval_every=3", "checkpoint_every=0", "execution.strategy=vmap"]
out = {}
for algorithm in sys.argv[1:]:
  finals = []
  for devices in (1, 4):
    config = load_config(None, base + [f"algorithm.name={algorithm}",
                                       f"execution.devices={devices}",
                                       f"out_dir={sys.argv[0]}_{algorithm}_{devices}"])
    result = run(config, progress=False)
    params = result.state.params
    finals.append(np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(params)]))
    if devices == 4:
      leaf = jax.tree.leaves(params)[0]
      out[algorithm + "_devices"] = len(leaf.sharding.device_set)
  out[algorithm] = float(np.max(np.abs(finals[0] - finals[1])))
print(json.dumps(out))
"""


def test_four_devices_match_one(tmp_path):
  script = tmp_path / "runs.py"
  script.write_text(RUNS)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  done = subprocess.run(
    [sys.executable, str(script), "fedavg", "scaffold"],
    env=env,
    capture_output=True,
    text=True,
    cwd=script.parent,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  differences = json.loads(done.stdout.strip().splitlines()[-1])
  for algorithm in ("fedavg", "scaffold"):
    assert differences[algorithm + "_devices"] == 4, algorithm  # the state lives on the mesh
    assert differences[algorithm] <= 1e-5, algorithm


def test_sharding_needs_equal_shards_and_vmap():
  from fedjax_lab import load_config

  with pytest.raises(ValueError, match="cohort_size must be a multiple of execution.devices=4"):
    load_config(None, ["cohort_size=6", "execution.devices=4", "execution.strategy=vmap"])
  with pytest.raises(ValueError, match="execution.strategy must be vmap"):
    load_config(None, ["cohort_size=8", "data.num_clients=8", "execution.devices=4"])
