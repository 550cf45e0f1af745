"""Config validation helpers: one line naming the field, what is allowed, and the value."""

from __future__ import annotations

import dataclasses
import math
import typing

_SCALARS = {int: "an int", float: "a finite number", str: "a string", bool: "true or false"}


def require(condition: bool, field: str, allowed: str, value) -> None:
  """Raise ``ValueError("{field} must be {allowed}, got {value!r}")`` unless ``condition``."""
  if not condition:
    raise ValueError(f"{field} must be {allowed}, got {value!r}")


def one_of(field: str, value, allowed) -> None:
  """``value`` must be in ``allowed``."""
  require(value in allowed, field, "one of " + ", ".join(map(str, allowed)), value)


def _holds(hint, value) -> bool:
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return is_number and math.isfinite(value)
  return isinstance(value, hint)


def typed_fields(instance, prefix: str = "") -> None:
  """Each field annotated ``int``, ``float``, ``str`` or ``bool`` holds a value of that type
  (an int is accepted for a float; floats must be finite), each ``tuple[int, ...]`` (or of
  another scalar) a tuple of such values, and each field annotated with a dataclass holds an
  instance of it. Called first in the configs' ``__post_init__``, so the
  Python API is checked as strictly as a config file is parsed."""
  hints = typing.get_type_hints(type(instance))
  for field in dataclasses.fields(instance):
    hint, value = hints[field.name], getattr(instance, field.name)
    if hint in _SCALARS:
      require(_holds(hint, value), prefix + field.name, _SCALARS[hint], value)
    elif typing.get_origin(hint) is tuple:  # tuple[int, ...] and the like
      (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
      require(
        isinstance(value, tuple) and all(_holds(item, v) for v in value),
        prefix + field.name,
        f"a list of {item.__name__} values",
        value,
      )
    elif dataclasses.is_dataclass(hint):
      require(isinstance(value, hint), prefix + field.name, f"a {hint.__name__}", value)
