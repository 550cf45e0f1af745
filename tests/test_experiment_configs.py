"""Every experiment config in the repository loads and validates."""

import json
import pathlib

import pytest

from fedjax_lab.config import load_config

CONFIGS = sorted(
  path
  for path in (pathlib.Path(__file__).parent.parent / "experiments").rglob("*.json")
  # results, and the world specs of data.tfds_text.spec (tests/test_worldlm.py checks those)
  if "results" not in path.parts and not path.name.endswith("_world.json")
)

# the config each folder's benchmarks.json overrides (its reproduce.py's --config default)
BENCHMARK_BASES = {"pfedlia": "pfedlia/reduced.json", "personalized": "pfedlia/reduced.json"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_config_is_valid(path):
  if path.name == "benchmarks.json":  # override lists applied to the folder's base config
    base = path.parents[1] / BENCHMARK_BASES[path.parent.name]
    for overrides in json.loads(path.read_text()).values():
      assert load_config(str(base), overrides).rounds >= 1
    return
  config = load_config(str(path))
  assert config.rounds >= 1
