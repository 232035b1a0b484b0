"""The package's layout holds: its import graph (read from the code's AST, imports inside functions
included) has no loop, at most one import runs upward in the layers declared below, and every module
is in docs/design.md's module table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import otel_dbperf

PACKAGE = Path(otel_dbperf.__file__).parent
ROOT = PACKAGE.parent

#: the layers, lowest first; a module may import its own layer and the ones below. The first pattern
#: that matches a module's name (without the ``otel_dbperf.`` prefix) places it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base: settings, public names, guard, fork safety, SDK internals, the export side's pauses",
        (
            "settings",
            "attributes",
            "metric_names",
            "_startup_log",
            "_forksafe",
            "_guard",
            "_resources",
            "_sdk_compat",
            "_urls",
            "_version",
            "_pause",
        ),
    ),
    ("analysis: statements, calls, errors, metric views", ("_sql", "_nosql", "_error_kind", "_errors", "metrics")),
    ("the pipeline: what a query's record touches on its three threads", ("_pipeline",)),
    (
        "what feeds or reads the pipeline: SQLAlchemy listeners, exporters, logs, fork, sqlite3, profiler, "
        "the database server's side (dbmonitor)",
        ("_sqla", "exporters", "_logs", "_prefork", "_sqlite3", "profiler", "dbmonitor"),
    ),
    ("the offline report (reads exported spans)", ("report",)),
    (
        "composition and entry points",
        ("_runtime", "configurator", "distro", "_hooks", "_launcher", "profiling", "_testrun", "pytest_plugin", ""),
    ),
]
MAX_UPWARD = 1


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _reexports(modules: dict[str, Path]) -> dict[str, dict[str, str]]:
    """package -> {name: the submodule its ``__init__`` takes it from}."""
    found: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                for alias in node.names:
                    found.setdefault(name, {})[alias.asname or alias.name] = f"{name}.{node.module}"
    return found


def _graph() -> dict[str, set[str]]:
    """module -> the modules it imports (an import of a name a package's ``__init__`` only hands on
    counts as an import of the submodule that defines it)."""
    modules = _modules()
    reexports = _reexports(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    if f"{module}.{alias.name}" in modules:
                        targets.append(f"{module}.{alias.name}")
                    else:
                        targets.append(reexports.get(module, {}).get(alias.name, module))
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _layer(module: str) -> int:
    short = module.removeprefix("otel_dbperf").removeprefix(".")
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if short == pattern or (pattern and short.startswith(pattern + ".")):
                return index
    raise AssertionError(f"{module} is in no layer of {__file__}")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_loop() -> None:
    assert _cycles(_graph()) == []


def test_the_graph_sees_imports_inside_functions_and_through_package_reexports() -> None:
    graph = _graph()
    assert "otel_dbperf._sqla.explain.listener" in graph["otel_dbperf._sqla"]  # inside install_explain
    assert "otel_dbperf._pipeline.processor" in graph["otel_dbperf._runtime"]  # via _pipeline's __init__
    assert "otel_dbperf._pipeline" not in graph["otel_dbperf._sqla.pools"]


def test_at_most_one_import_runs_upward() -> None:
    graph = _graph()
    upward = sorted(
        f"{source} -> {target}" for source, targets in graph.items() for target in targets
        if _layer(target) > _layer(source)
    )  # fmt: skip
    assert len(upward) <= MAX_UPWARD, upward


def test_every_module_is_in_the_design_module_table() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    table = text.split("## Pieces", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w/]+\.py|[\w/]+/)`", table))
    missing = []
    for path in _modules().values():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative not in named:
            missing.append(relative)
    assert missing == []
