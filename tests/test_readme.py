"""The README is a front page that stays true: its tables name every registered method, data
source, federation, partitioner and model, the methods table's guarantee columns are the
registry's declarations, and its Python example runs as written."""

from __future__ import annotations

import os
import pathlib
import re

import pytest

from fedjax_lab.algorithms import ALGORITHMS
from fedjax_lab.data.catalog import FEDERATIONS, PARTITIONERS, SOURCES
from fedjax_lab.models import MODELS

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _table(heading: str) -> list[list[str]]:
  """The rows (cells stripped) of the first table under ``## heading``."""
  section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
  lines = [line for line in section.splitlines() if line.startswith("|")]
  return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def _names(cell: str) -> set[str]:
  return set(re.findall(r"`([^`]+)`", cell))


def test_the_readme_stays_a_front_page():
  assert len(README.splitlines()) <= 200


@pytest.mark.parametrize(
  "heading, registry",
  [
    ("Methods", ALGORITHMS),
    ("Data", SOURCES),
    ("Data", FEDERATIONS),
    ("Models", MODELS),
  ],
)
def test_every_registered_entry_has_a_row(heading, registry):
  listed = set().union(*(_names(row[0]) for row in _table(heading)))
  assert set(registry.names()) <= listed, set(registry.names()) - listed


def test_every_partitioner_has_a_row():
  section = README.split("\n## Data\n", 1)[1].split("\n## ", 1)[0]
  partitioners = section.split("| partitioner |", 1)[1]
  rows = [line for line in partitioners.splitlines() if line.startswith("| `")]
  assert {row.split("`")[1] for row in rows} == set(PARTITIONERS.names())


def test_the_methods_table_states_what_each_entry_declares():
  for name, _, _, dp, losses, poisson in _table("Methods"):
    entry = ALGORITHMS.get(name.strip("`"))
    declared = (
      entry.aggregated_uploads,
      entry.any_cohort_size or entry.keeps_lost_clients,
      entry.any_cohort_size,
    )
    assert (dp == "yes", losses == "yes", poisson == "yes") == declared, name


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
  example = README.split("## Example\n\n```python\n", 1)[1].split("```", 1)[0]
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    exec(compile(example, "README example", "exec"), {})
  finally:
    os.chdir(cwd)
  assert (tmp_path / "runs/digits_scaffold/metrics.jsonl").exists()
