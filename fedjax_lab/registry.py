"""Name -> entry tables: how methods, aggregators, data sources, partitioners and models are
found by the name a config gives. Adding one is a module plus a ``register`` call; code outside
the package registers the same way (docs/writing_a_method.md).

An entry may carry ``options``, the frozen dataclass of its own settings: a config writes them
as a table named after the entry (``algorithm.fedmr.granularity=layer``,
``aggregation.krum.byzantine=2``, ``model.mlp.hidden=[100]``), parsed and validated by that
dataclass (``config.Selection``). ``NoOptions`` is the table of an entry without settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Generic, TypeVar

Entry = TypeVar("Entry")


@dataclasses.dataclass(frozen=True)
class NoOptions:
  """The options of an entry that has none of its own."""


class Registry(Generic[Entry]):
  """Entries by name, in registration order. ``field`` is the config field that names an entry
  (``algorithm.name``), used in error messages."""

  def __init__(self, field: str):
    self.field = field
    self._entries: dict[str, Entry] = {}

  def register(self, name: str, entry: Entry, *, replace: bool = False) -> Entry:
    """Add ``entry`` under ``name``; an existing name is an error unless ``replace``."""
    if name in self._entries and not replace:
      raise ValueError(f"{self.field}={name!r} is already registered")
    self._entries[name] = entry
    return entry

  def unregister(self, name: str) -> None:
    """Remove ``name`` if present (a plugin's entries, after a test)."""
    self._entries.pop(name, None)

  def get(self, name: str) -> Entry:
    """The entry for ``name``, or one line naming the field and the allowed names."""
    if name not in self._entries:
      raise ValueError(f"{self.field} must be one of {', '.join(self._entries)}, got {name!r}")
    return self._entries[name]

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)
