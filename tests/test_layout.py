"""The package's shape, read from its source with ``ast``: no import cycles, layers that depend one way, pure
RFC code that imports neither Twisted nor LMDB.

Every import counts, including those inside functions: a lazy import hides a cycle, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "accel"

# The layers, lowest first. A module may import its own layer and the layers below it, never one above.
# The request path reads upwards: config and pure rules, the client side, TLS, the origin side, the cache
# around it, then assembly (app), the worker processes, twistd (tap) and the command line.
LAYERS = ["config", "http", "tls", "proxy", "cache", "app", "workers", "tap", "cli"]

# Pure decisions: no sockets, no reactor, no storage engine. They take `now` as an argument.
PURE = [
    "accel.config",
    "accel.config.reader",
    "accel.config.sections",
    "accel.config.settings",
    "accel.cache.directives",
    "accel.cache.entry",
    "accel.cache.fields",
    "accel.cache.httpdate",
    "accel.cache.key",
    "accel.cache.partial",
    "accel.cache.policy",
    "accel.cache.ranges",
    "accel.cache.vary",
    "accel.http.access",
    "accel.http.addresses",
    "accel.http.compress",
    "accel.http.encoding",
    "accel.http.header_rules",
    "accel.http.headers",
    "accel.http.target",
    "accel.proxy.balancer",
    "accel.proxy.ratelimit",
    "accel.proxy.rewrite",
    "accel.proxy.routing",
]
IMPURE_ROOTS = ("twisted", "lmdb", "OpenSSL", "socketserver", "asyncio")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name an import statement in the module mentions (absolute, with `from X import y` as X and X.y)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imported_names(name, path) if m in known and m != name} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_layers_depend_one_way():
    wrong = []
    for name, imports in import_graph().items():
        mine = layer_of(name)
        if mine is None:
            continue
        for target in imports:
            theirs = layer_of(target)
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
                wrong.append(f"{name} ({mine}) imports {target} ({theirs})")
    assert wrong == []


def test_every_folder_is_a_known_layer():
    assert {layer_of(name) for name in modules()} - {None} <= set(LAYERS)


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_io(name):
    known = modules()
    assert name in known, f"{name} is listed as pure but does not exist"
    impure = sorted(m for m in imported_names(name, known[name]) if m.split(".")[0] in IMPURE_ROOTS)
    leaks = sorted(m for m in import_graph()[name] if m not in PURE and m.rpartition(".")[0] not in PURE)
    assert (impure, leaks) == ([], [])


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_every_package_is_listed_in_setup_cfg():
    """setup.cfg lists packages one by one (``find:`` would miss twisted.plugins): a new folder must be added, or
    a plain (non-editable) install ships without it."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read(PACKAGE.parent / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    folders = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert folders - listed == set()
