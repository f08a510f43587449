"""The floors of docs/architecture.md hold in the code: no import runs up, no circle of files.

Reads the floors table, the named exceptions and the registry-string table from
``docs/architecture.md`` (so the page and the code cannot drift apart) and every ``port`` import
in ``port/`` with :mod:`ast`: module level, inside functions and under ``TYPE_CHECKING`` alike.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from port import formats

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "port"
DOC = ROOT / "docs" / "architecture.md"
MAX_STAGE_LINES = 300  # docs/architecture.md: a stage over this carries domain logic


# -- what the page says -------------------------------------------------------------------------
def _table(name: str) -> list[list[str]]:
    """The body rows of the markdown table between ``<!-- name...-->`` and ``<!-- /name -->``."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"<!-- {re.escape(name)}[:\s].*?-->\n(.*?)<!-- /{re.escape(name)} -->",
                      text, re.S)
    assert found, f"docs/architecture.md has no <!-- {name} --> table"
    rows = []
    for line in found.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.strip() or set("".join(cells)) <= set("-: "):
            continue  # blank line or the |---| rule
        rows.append(cells)
    return rows[1:]  # drop the header


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def documented_floors() -> dict[str, int]:
    """Package -> floor number, from the floors table."""
    out: dict[str, int] = {}
    for cells in _table("floors"):
        for name in _names(cells[1]):
            assert name not in out, f"{name} is on two floors in docs/architecture.md"
            out[name] = int(cells[0])
    return out


def documented_exceptions() -> set[tuple[str, str]]:
    """(importing module, imported module) pairs allowed to break the floors, each with a why."""
    out = set()
    for cells in _table("exceptions"):
        assert len(cells) == 3 and cells[2], f"an exception needs its reason: {cells}"
        out.add((_names(cells[0])[0], _names(cells[1])[0]))
    return out


# -- what the code does -------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    """One ``port`` import: who, what (resolved to a module file), where."""

    source: str
    target: str
    line: int


def _resolve(name: str) -> str:
    """The module file ``name`` lives in (``port.engines.load`` -> ``port.engines``)."""
    while name not in MODULES:
        assert "." in name, f"{name} is no module of port"
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str) -> Iterator[Import]:
    """Every ``port`` import in ``module``, wherever it sits in the file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            # `from port import engines` imports the module port.engines, not port/__init__.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        for target in targets:
            if target == "port" or target.startswith("port."):
                yield Import(module, _resolve(target), node.lineno)


def package_of(module: str) -> str:
    """The floor-table name of a module: its top-level name under ``port`` (``port`` itself
    for ``port/__init__.py``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "port"


ALL_IMPORTS = [imp for m in MODULES for imp in imports_of(m)]


# -- the checks ---------------------------------------------------------------------------------
def test_every_module_is_on_a_floor() -> None:
    floors = documented_floors()
    missing = sorted({package_of(m) for m in MODULES} - set(floors))
    assert not missing, (f"not on any floor of docs/architecture.md: {missing}: add each to the "
                         "floors table")
    gone = sorted(set(floors) - {package_of(m) for m in MODULES})
    assert not gone, f"docs/architecture.md's floors name packages that do not exist: {gone}"


def test_no_import_runs_up_or_across_a_floor() -> None:
    floors = documented_floors()
    allowed = documented_exceptions()
    wrong = []
    for imp in ALL_IMPORTS:
        src, dst = package_of(imp.source), package_of(imp.target)
        if src == dst or floors[dst] < floors[src] or (imp.source, imp.target) in allowed:
            continue
        where = "up" if floors[dst] > floors[src] else "across"
        wrong.append(f"{MODULES[imp.source].relative_to(ROOT)}:{imp.line} imports "
                     f"{imp.target} ({where}: floor {floors[src]} -> {floors[dst]})")
    assert not wrong, "imports against the floors:\n" + "\n".join(wrong)


def test_every_named_exception_is_still_needed() -> None:
    floors = documented_floors()
    used = {(i.source, i.target) for i in ALL_IMPORTS
            if package_of(i.source) != package_of(i.target)
            and floors[package_of(i.target)] >= floors[package_of(i.source)]}
    stale = sorted(documented_exceptions() - used)
    assert not stale, f"named exceptions no code needs any more (remove them): {stale}"


def file_circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one file (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_circle_finder_finds_a_circle() -> None:
    """The finder itself: a made-up graph with one circle of three and a tail."""
    edges = defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()})
    assert file_circles(edges) == [["a", "b", "c"]]
    assert file_circles(defaultdict(set, {"a": {"b"}, "b": set()})) == []


def test_no_circle_of_files() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in ALL_IMPORTS:
        if imp.target != imp.source:
            edges[imp.source].add(imp.target)
    for m in MODULES:
        edges.setdefault(m, set())
    circles = file_circles(edges)
    assert not circles, f"files importing each other in a circle: {circles}"


def test_stage_modules_stay_short() -> None:
    long = {p.name: n for p in (PACKAGE / "stages").glob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_STAGE_LINES}
    assert not long, (f"stage modules over {MAX_STAGE_LINES} lines (move the domain logic into "
                      f"its package): {long}")


# -- registry strings: a dependency of the module that resolves them ------------------------------
def _registry_strings() -> dict[str, list[str]]:
    """``Class.field`` -> every ``"module:attr"`` string the registry holds in that field."""
    out: dict[str, list[str]] = defaultdict(list)
    for cls, entries in ((formats.Backend, formats.BACKENDS.values()),
                         (formats.Format, formats.FORMATS.values())):
        for entry in entries:
            for f in fields(cls):
                value = getattr(entry, f.name)
                values = value.values() if hasattr(value, "values") else [value]
                for v in values:
                    if isinstance(v, str) and re.fullmatch(r"port(\.\w+)+:\w+", v):
                        out[f"{cls.__name__}.{f.name}"].append(v)
    return out


def test_every_registry_string_is_resolved_on_or_above_its_target() -> None:
    floors = documented_floors()
    resolvers = {_names(c[0])[0]: _names(c[1])[0] for c in _table("registry-strings")}
    found = _registry_strings()
    undocumented = sorted(set(found) - set(resolvers))
    assert not undocumented, ("registry fields holding module strings with no resolving package "
                              f"in docs/architecture.md's registry-strings table: {undocumented}")
    wrong = []
    for field_name, strings in found.items():
        by = resolvers[field_name]
        for text in strings:
            target = package_of(_resolve(text.split(":")[0]))
            if target != by and floors[target] >= floors[by]:
                wrong.append(f"{field_name} {text!r}: resolved in {by} (floor {floors[by]}), "
                             f"names {target} (floor {floors[target]})")
    assert not wrong, "registry strings that run up a floor:\n" + "\n".join(wrong)


def test_the_resolving_packages_really_resolve_those_fields() -> None:
    """The table's ``resolved in`` column is checked against the code: the package calls the
    registry method (or ``resolve``) on that field."""
    calls = {"Backend.runner": "runner_class(", "Backend.probe": "resolve(entry.probe)",
             "Format.exporters": ".exporter(", "Format.precision_of": ".read_precision(",
             "Format.layerwise": "resolve(fmt.layerwise)"}
    for cells in _table("registry-strings"):
        field_name, package = _names(cells[0])[0], _names(cells[1])[0]
        assert field_name in calls, f"test_floors knows no call for {field_name}: add it"
        files = [p for m, p in MODULES.items() if package_of(m) == package]
        assert any(calls[field_name] in p.read_text(encoding="utf-8") for p in files), (
            f"{package} does not resolve {field_name} ({calls[field_name]!r} not found)")


@pytest.mark.parametrize("module", ["port.stages.evaluate", "port.cli"])
def test_imports_inside_functions_are_seen(module: str) -> None:
    """The parser reaches function-level imports: these modules import their jobs lazily."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = [n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
              for n in ast.walk(f) if isinstance(n, ast.ImportFrom)
              and (n.module or "").startswith("port")]
    seen = {(i.line) for i in imports_of(module)}
    assert nested and all(n.lineno in seen for n in nested)
