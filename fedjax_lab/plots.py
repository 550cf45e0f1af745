"""Figures are written to files: matplotlib on its file-only backend, imported on first use so
that importing the package does not import matplotlib."""

from __future__ import annotations

import pathlib

import numpy as np


def pyplot():
  """``matplotlib.pyplot`` on the ``Agg`` backend (PNG files; no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_curves(panels: dict, path: pathlib.Path, ylabel: str) -> None:
  """The one curve figure of every summary: a panel per ``panels`` entry (title -> {label:
  runs}, each run a list of ``(round, value)``), in each a line per label, the mean over its
  runs with their min-max band (runs cut to the shortest); one legend of every label."""
  plt = pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  colors: dict[str, str] = {}
  for ax, (title, lines) in zip(axes[0], panels.items()):
    for label, runs in lines.items():
      color = colors.setdefault(label, f"C{len(colors)}")
      length = min(len(run) for run in runs)
      rounds = [r for r, _ in runs[0][:length]]
      values = np.array([[v for _, v in run[:length]] for run in runs])
      ax.plot(rounds, values.mean(0), color=color, label=label)
      ax.fill_between(rounds, values.min(0), values.max(0), color=color, alpha=0.15)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(ylabel)
  labelled = {}
  for ax in axes[0]:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      labelled.setdefault(label, handle)
  axes[0][-1].legend(labelled.values(), labelled.keys(), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
