"""Every read or write of an OpenTelemetry SDK or contrib private attribute goes through ``_sdk_compat``,
except the request-thread reads listed by name (there a call per access is a measured cost) and the
modules not yet moved over, each named with its reason."""

from __future__ import annotations

import ast
from pathlib import Path

import opentelemetry

import otel_dbperf

#: (function, expression) -> why it stays inline. The request-thread reads are the ones named in
#: ``_sdk_compat``'s docstring; keep the two lists equal.
ALLOWED: dict[tuple[str, str], str] = {
    **{
        ("DbPerfSpanProcessor.on_start", expr): "request thread"
        for expr in ("span._context", "span._parent", "span._kind", "span._instrumentation_scope")
    },
    **{
        ("DbPerfSpanProcessor._on_ending", expr): "request thread"
        for expr in ("span._context", "span._status", "span._start_time", "span._end_time")
    },
    **{
        ("DbPerfSpanProcessor._end_query", expr): "request thread"
        for expr in ("span._attributes", "span._attributes._dict", "span._start_time", "span._end_time", "span._status")
    },
    ("DbPerfSpanProcessor.open_query", "span._context"): "request thread",
    ("_after_cursor_execute", "span._context"): "request thread (the duplicates digest's listener)",
    # not OpenTelemetry's attributes, only names the SDK also uses
    ("_renew_locks", "_lock._at_fork_reinit"): "threading's",
    ("_renew_locks", "made._at_fork_reinit"): "threading's",
    ("_renew_locks", "semaphore._cond._at_fork_reinit"): "threading's",
    ("_renew_locks", "semaphore._value"): "threading's",
    ("profiler_mount", "mount._pool"): "otel-dbperf's profiler mount",
    ("DbPerfConfigurator._configure", "super()._configure"): "the SDK configurator's hook, overridden (docs/design.md)",
    # the encoder's per-span reads (export thread, a call per read is a measured cost), each listed in
    # docs/design.md "Private SDK access"
    ("SpanEncoder.span", "span._attributes"): "_otlp's encoder (export thread, per span)",
    ("SpanEncoder.span", "span._events"): "_otlp's encoder (export thread, per span)",
    ("SpanEncoder.span", "span._links"): "_otlp's encoder (export thread, per span)",
}


def _opentelemetry_private_names() -> set[str]:
    """Private names the installed OpenTelemetry packages define: attributes they set on ``self``,
    and their private functions and classes."""
    names: set[str] = set()
    for root in opentelemetry.__path__:
        for path in Path(root).rglob("*.py"):
            try:
                tree = ast.parse(path.read_text())
            except (SyntaxError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    name = node.attr
                elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    name = node.name
                else:
                    continue
                if name.startswith("_") and not name.startswith("__"):
                    names.add(name)
    return names


def _accesses(names: set[str]) -> dict[tuple[str, str], list[str]]:
    """(function qualname, expression) -> where, for every ``x._name`` on something else than
    ``self``/``cls`` whose ``_name`` OpenTelemetry defines, outside ``_sdk_compat``."""
    package = Path(otel_dbperf.__file__).parent
    found: dict[tuple[str, str], list[str]] = {}

    def visit(node: ast.AST, qualname: str, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{qualname}.{child.name}" if qualname else child.name, where)
                continue
            if (
                isinstance(child, ast.Attribute)
                and child.attr in names
                and not (isinstance(child.value, ast.Name) and child.value.id in ("self", "cls"))
            ):
                key = (_short(qualname), ast.unparse(child))
                found.setdefault(key, []).append(f"{where}:{child.lineno}")
            visit(child, qualname, where)

    for path in sorted(package.rglob("*.py")):
        if path.name == "_sdk_compat.py":
            continue
        visit(ast.parse(path.read_text()), "", str(path.relative_to(package)))
    return found


def _short(qualname: str) -> str:
    """``Class.method`` for a method, the function's own name otherwise (nested functions: the innermost)."""
    parts = qualname.split(".")
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return ".".join(parts[-2:])
    return parts[-1]


def test_private_opentelemetry_attributes_are_read_through_sdk_compat_or_allowed_by_name() -> None:
    found = _accesses(_opentelemetry_private_names())
    unexpected = {key: where for key, where in found.items() if key not in ALLOWED}
    assert unexpected == {}
    assert [key for key in ALLOWED if key not in found] == []  # no stale entry


def test_the_export_thread_half_reads_no_span_field_inline() -> None:
    found = _accesses(_opentelemetry_private_names())
    assert [where for where in found.values() for w in where if w.startswith("_pipeline/enrich.py")] == []


def test_sdk_compat_names_every_request_thread_exception() -> None:
    from otel_dbperf import _sdk_compat

    doc = _sdk_compat.__doc__ or ""
    for (function, expression), why in ALLOWED.items():
        if why.startswith("request thread"):
            assert function.rsplit(".", 1)[-1] in doc, function
            assert f"``{expression.removeprefix('span.')}``" in doc or expression.removeprefix("span.") in doc, (
                function,
                expression,
            )


def test_a_forked_worker_samples_its_own_process_and_a_wrapped_metric_exporter_keeps_its_preferences() -> None:
    import os

    from opentelemetry.sdk.metrics import Counter
    from opentelemetry.sdk.metrics.export import AggregationTemporality, ConsoleMetricExporter

    from otel_dbperf import _sdk_compat
    from otel_dbperf.exporters._watch import WatchedMetricExporter

    class Instrumentor:
        _instance: object = None

    class Sampling:
        _proc: object = "the parent's process"

    Instrumentor._instance = Sampling()
    _sdk_compat.renew_sampled_process(Instrumentor)
    assert Sampling._proc == "the parent's process" and Instrumentor._instance._proc.pid == os.getpid()  # type: ignore[attr-defined]
    Instrumentor._instance = None
    _sdk_compat.renew_sampled_process(Instrumentor)  # not instrumented: nothing to do

    inner = ConsoleMetricExporter(preferred_temporality={Counter: AggregationTemporality.DELTA})
    watched = WatchedMetricExporter(inner)
    assert watched._preferred_temporality[Counter] is AggregationTemporality.DELTA  # noqa: SLF001
