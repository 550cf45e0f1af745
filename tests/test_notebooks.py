"""Every notebook under notebooks/ executes top to bottom at a small size."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # executes the notebooks (make test-fast skips it)

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
  monkeypatch.setenv("FEDJAX_LAB_NOTEBOOK_ROUNDS", "3")
  monkeypatch.setenv("FEDJAX_LAB_NOTEBOOK_OUT", str(tmp_path / "out"))
  notebook = nbformat.read(path, as_version=4)
  NotebookClient(
    notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()
  errors = [
    o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"
  ]
  assert not errors
