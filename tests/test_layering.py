"""The package's layering holds: data -> models -> ops -> engine -> algorithms -> run. Each
module imports only modules of its own layer or a lower one; nothing in the package imports the
command line (``cli``). Read from the source with ``ast``, so an upward import fails here."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fedjax_lab"
# Layer of each top-level name under fedjax_lab; base modules (no package imports) are 0.
LAYERS = {
  "registry": 0,
  "checks": 0,
  "stats": 0,
  "plots": 0,
  "data": 1,
  "models": 2,
  "ops": 3,
  "engine": 4,
  "algorithms": 5,
  "config": 6,
  "build": 6,
  "runner": 6,
  "hooks": 6,
  "features": 6,
  "config_parsing": 6,
  "round_step": 6,
  "run_hooks": 6,
  "evaluation": 6,
  "grid": 6,
  "run_cache": 6,
  "checkpoint": 6,
  "run_folder": 6,
  "tables": 6,
  "profiling": 6,
  "writers": 6,
  "sweep": 6,
  "report": 6,
  "cli": 7,
  "__init__": 7,
}


def _module_name(path: pathlib.Path) -> str:
  return ".".join(("fedjax_lab",) + path.relative_to(PACKAGE).with_suffix("").parts)


def _layer(module: str) -> int:
  parts = module.split(".")
  return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, imported fedjax_lab module) for every import in ``path``."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found += [(node.lineno, node.module)]
      found += [
        (node.lineno, f"{node.module}.{a.name}")
        for a in node.names
        if (PACKAGE / pathlib.Path(*node.module.split(".")[1:]) / a.name).is_dir()
        or (PACKAGE / pathlib.Path(*node.module.split(".")[1:]) / f"{a.name}.py").exists()
      ]
  return [(line, name) for line, name in found if name.split(".")[0] == "fedjax_lab"]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
  for path in MODULES:
    _layer(_module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_import(path):
  own = _layer(_module_name(path))
  upward = [
    f"line {line}: {name} (layer {_layer(name)})"
    for line, name in _imports(path)
    if name != "fedjax_lab" and _layer(name) > own
  ]
  assert not upward, f"{_module_name(path)} (layer {own}) imports upward: {upward}"


def test_nothing_imports_the_cli():
  users = [
    str(path)
    for path in MODULES
    for _, name in _imports(path)
    if name == "fedjax_lab.cli" and path.name != "cli.py"
  ]
  assert not users


def _top_level(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycle_between_top_level_modules():
  """No two top-level modules or packages import each other, even through imports inside
  functions (``grid`` and ``sweep`` did): a cycle makes one module's meaning depend on the
  other's import order."""
  edges: dict[str, set[str]] = {}
  for path in MODULES:
    source = _top_level(_module_name(path))
    for _, name in _imports(path):
      target = _top_level(name)
      if name != "fedjax_lab" and target != source and source != "__init__":
        edges.setdefault(source, set()).add(target)

  def reaches(start: str, goal: str, seen: set[str]) -> bool:
    for nxt in edges.get(start, ()):
      if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
        return True
    return False

  cycles = sorted(
    f"{a} -> {b} -> ... -> {a}" for a in edges for b in edges[a] if reaches(b, a, {b})
  )
  assert not cycles, cycles


def test_every_module_is_named_in_the_architecture_page():
  """``docs/architecture.md`` names every module of the package (a new one must be placed)."""
  page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
  missing = [
    str(path.relative_to(PACKAGE))
    for path in MODULES
    if path.name != "__init__.py" and path.name not in page
  ]
  assert not missing, f"docs/architecture.md does not name {missing}"


def test_no_function_in_the_package_is_over_80_lines():
  long = []
  for path in sorted(PACKAGE.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > 80:
          long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
  assert not long, long
