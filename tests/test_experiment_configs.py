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


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_config_is_valid(path):
  if path.name == "benchmarks.json":  # override lists applied to reduced.json
    for overrides in json.loads(path.read_text()).values():
      assert load_config(str(path.parent / "reduced.json"), overrides).rounds >= 1
    return
  config = load_config(str(path))
  assert config.rounds >= 1
