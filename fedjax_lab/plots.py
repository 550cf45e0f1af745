"""Figures are written to files: matplotlib on its file-only backend, imported on first use so
that importing the package does not import matplotlib."""

from __future__ import annotations


def pyplot():
  """``matplotlib.pyplot`` on the ``Agg`` backend (PNG files; no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt
