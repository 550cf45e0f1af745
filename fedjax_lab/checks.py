"""Config validation helpers: one line naming the field, what is allowed, and the value."""

from __future__ import annotations


def require(condition: bool, field: str, allowed: str, value) -> None:
  """Raise ``ValueError("{field} must be {allowed}, got {value!r}")`` unless ``condition``."""
  if not condition:
    raise ValueError(f"{field} must be {allowed}, got {value!r}")


def one_of(field: str, value, allowed) -> None:
  """``value`` must be in ``allowed``."""
  require(value in allowed, field, "one of " + ", ".join(map(str, allowed)), value)
