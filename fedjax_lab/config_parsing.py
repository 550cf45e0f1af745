"""Parsing a config's tables into frozen dataclasses: ``Selection`` (a section that names a
registered entry and holds its options table), ``build`` (a dataclass from a table, unknown
fields refused in one line naming the allowed ones) and ``coerce`` (a value from JSON, TOML or
the command line into its field's type)."""

from __future__ import annotations

import dataclasses
import typing

from fedjax_lab.checks import require, typed_fields


class Selection:
  """A config section that names registered entries and holds each one's own options
  dataclass, written as a table named after the entry (``algorithm.fedmr.granularity=layer``,
  ``aggregation.krum.byzantine=2``, ``model.mlp.hidden=[100]``, ``data.dirichlet.alpha=0.1``);
  ``None`` options mean the entry's defaults. The tables of entries not selected are parsed,
  validated and dropped, so one base config serves a sweep over entries. ``CHOICES``: for each
  selector field, its registry and the field that holds its options (most sections have one:
  ``(("name", ALGORITHMS, "options"),)``; ``data`` has a source and a partition). Subclasses
  are frozen dataclasses whose options fields default to None; each calls
  ``_select_options()`` in ``__post_init__``."""

  SECTION: typing.ClassVar[str]
  CHOICES: typing.ClassVar[tuple]

  def _select_options(self) -> None:
    for selector, registry, field in self.CHOICES:
      name = getattr(self, selector)
      options = registry.get(name).options  # an unknown name: one line naming the field
      if getattr(self, field) is None:
        object.__setattr__(self, field, options())
      require(
        isinstance(getattr(self, field), options),
        f"{self.SECTION}.{field}",
        f"a {options.__name__} for {self.SECTION}.{selector}={name!r}",
        type(getattr(self, field)).__name__,
      )
      typed_fields(getattr(self, field), f"{self.SECTION}.{name}.")

  @classmethod
  def from_dict(cls, values: dict, prefix: str):
    """From a table of the shared fields and ``<entry>: {options}`` tables (the class
    docstring); any other key is an error naming the allowed ones."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    option_fields = {field for _, _, field in cls.CHOICES}
    shared = [name for name in fields if name not in option_fields]
    kwargs = {}
    for selector, registry, field in cls.CHOICES:
      name = coerce(f"{prefix}{selector}", str, values.get(selector, fields[selector].default))
      registry.get(name)
      kwargs[field] = None
    for key, value in values.items():
      field = field_name(prefix, key)
      owners = [(s, r, f) for s, r, f in cls.CHOICES if key in r]
      if key in shared:
        kwargs[key] = coerce(field, hints[key], value)
      elif owners:
        for selector, registry, options_field in owners:
          parsed = build(registry.get(key).options, table(field, value), f"{field}.")
          chosen = values.get(selector, fields[selector].default)
          kwargs[options_field] = parsed if key == chosen else kwargs[options_field]
      else:
        tables = "; ".join(f"a {s} ({', '.join(r)})" for s, r, _ in cls.CHOICES)
        raise ValueError(
          f"{field} is not a config field; allowed: {', '.join(shared)}, or the options table "
          f"of {tables}"
        )
    return cls(**kwargs)

  def to_dict(self) -> dict:
    option_fields = {field for _, _, field in self.CHOICES}
    values = {
      f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in option_fields
    }
    for selector, _, field in self.CHOICES:
      values[getattr(self, selector)] = dataclasses.asdict(getattr(self, field))
    return values


def field_name(prefix: str, key) -> str:
  """``prefix + key`` for an error message, the key quoted when it would not print as one line
  (a user's key with a newline or a control character)."""
  key = str(key)
  return prefix + (key if key.isprintable() else repr(key))


def table(field: str, value) -> dict:
  if not isinstance(value, dict):
    raise ValueError(f"{field} must be a table of fields, got {value!r}")
  return value


def build(cls, values: dict, prefix: str = ""):
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in values.items():
    field = field_name(prefix, key)
    if key not in names:
      allowed = ", ".join(sorted(names)) or f"none ({cls.__name__} has no fields)"
      raise ValueError(f"{field} is not a config field; allowed: {allowed}")
    hint = hints[key]
    if isinstance(hint, type) and issubclass(hint, Selection):
      kwargs[key] = hint.from_dict(table(field, value), f"{field}.")
    elif dataclasses.is_dataclass(hint):
      kwargs[key] = build(hint, table(field, value), f"{field}.")
    else:
      kwargs[key] = coerce(field, hint, value)
  built = cls(**kwargs)
  typed_fields(built, prefix)  # an options table that is not selected is checked too
  return built


def coerce(field: str, hint, value):
  if hint is bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
    if isinstance(value, bool):
      return value
  elif hint is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
      return int(value)
  elif hint is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if isinstance(value, str):
      try:
        return float(value)
      except ValueError:
        pass
  elif hint is str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
      return str(value)
  elif typing.get_origin(hint) is tuple:  # tuple[int, ...]: a list, or "[200, 200]" / "200,200"
    (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
    if isinstance(value, str):
      text = value.strip().removeprefix("[").removesuffix("]")
      value = [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
      return tuple(coerce(f"{field}[{i}]", item, v) for i, v in enumerate(value))
    raise ValueError(f"{field} must be a list of {item.__name__} values, got {value!r}")
  raise ValueError(f"{field} must be of type {hint.__name__}, got {value!r}")
