"""Statistics over seeds for results tables: sample spread and paired differences.

A claim "A beats B" needs the paired difference across seeds, with its 95% interval
(Student t, n - 1 degrees of freedom), to exclude zero; otherwise there is no measurable
difference (docs/reproducing.md)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def describe(values) -> dict[str, float]:
  """Mean, sample standard deviation (ddof=1; NaN for one value), min, max and n over the
  finite ``values`` (NaN marks a diverged run, left out and counted in ``n_missing``): the one
  summary over seeds every table uses."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  nan = float("nan")
  return {
    "mean": float(finite.mean()) if finite.size else nan,
    "std": float(finite.std(ddof=1)) if finite.size > 1 else nan,
    "min": float(finite.min()) if finite.size else nan,
    "max": float(finite.max()) if finite.size else nan,
    "n": int(finite.size),
    "n_missing": int(values.size - finite.size),
  }


def paired_difference(a, b, confidence: float = 0.95) -> dict:
  """``a - b`` paired by seed: mean, the ``confidence`` t-interval, n, and ``verdict``:
  ``"a > b"``, ``"a < b"`` when the interval excludes 0, else ``"no measurable difference"``.
  Pairs with a NaN are left out."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  keep = np.isfinite(a) & np.isfinite(b)
  difference = a[keep] - b[keep]
  n = int(difference.size)
  if n < 2:
    return {
      "mean": float("nan"),
      "low": float("nan"),
      "high": float("nan"),
      "n": n,
      "verdict": "too few seeds",
    }
  mean = float(difference.mean())
  half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * difference.std(ddof=1) / np.sqrt(n))
  verdict = (
    "a > b" if mean - half > 0 else "a < b" if mean + half < 0 else ("no measurable difference")
  )
  return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "verdict": verdict}


def format_spread(values, digits: int = 2, scale: float = 1.0) -> str:
  """``"mean ± std (n=N)"`` of ``describe(values * scale)``, with ``", k diverged"`` inside
  the parentheses when k values are NaN."""
  d = describe(np.asarray(values, np.float64) * scale)
  missing = f", {d['n_missing']} diverged" if d["n_missing"] else ""
  return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f} (n={d['n']}{missing})"


STANDARD_SEEDS = 5  # docs/reproducing.md: seeds a comparison within its margin needs


def format_paired(a, b, digits: int = 2, within: float | None = None) -> str:
  """``"mean [low, high] verdict"`` of ``paired_difference(a, b)``. ``within``: the margin (in
  the values' unit) under which ``docs/reproducing.md`` asks for ``STANDARD_SEEDS`` seeds; a
  difference smaller than it on fewer seeds says ``(n seeds, below the standard)``."""
  d = paired_difference(a, b)
  text = f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}] {d['verdict']}"
  if within is not None and d["n"] < STANDARD_SEEDS and abs(d["mean"]) < within:
    text += f" ({d['n']} seeds, below the standard)"
  return text
