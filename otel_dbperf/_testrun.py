"""The pytest guard's in-process pipeline (``pytest --dbperf``, the ``dbperf`` fixture and marker).

Imported only when a run asks for the guard (see :mod:`.pytest_plugin`, which imports nothing of
OpenTelemetry). It builds what ``opentelemetry-instrument`` builds, in this process and without
exporters: a ``TracerProvider`` with otel-dbperf's :class:`DbPerfSpanProcessor`, the installed
instrumentations, the SQLAlchemy listeners, and a derivation thread whose one sink
(:class:`TestSink`) keeps each test's queries and request roll-ups in memory. The N+1 verdict,
its location, relationship and fix are the processor's own (:class:`~._pipeline.record.Rollup`,
:func:`~._pipeline.suggest.relationship_fix`), never recomputed here.

Each test's call runs under a root of its own (the test is a request when no server span is
around its queries): a span with ``--dbperf-report``, else a request the processor keeps with no
span. The test's context does not hold that root but a remote stand-in for it:
a framework's server span started in the test (a test client's request) has a remote parent, so
it is a roll-up root of its own (ten requests of one query each are no N+1), while a DB span
started right in the test joins the test's roll-up (see ``DbPerfSpanProcessor.on_start``).
Queries and roll-ups are counted per test: the queue is emptied (underived) when a test starts and
drained when it ends.

What no verdict reads is left out (unless ``--dbperf-report`` asks for the run's spans, which the
report reads): the test's root span (the processor keeps the test's request without one,
``DbPerfSpanProcessor.open_request``), the DB-API driver's spans under SQLAlchemy's (SQLAlchemy's
connections are made past contrib's driver wrapper; the processor leaves such nested spans out of
every count anyway), and the pool and transaction listeners. A raw driver connection is traced as
before. See docs/testing.md, "What it costs".
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import sys
from importlib.util import find_spec
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from . import _guard
from ._pipeline import DbPerfSpanProcessor, SpanDeriver
from ._pipeline.record import Query, Request, Rollup
from ._pipeline.suggest import relationship_fix
from ._sdk_compat import contrib_connect_original
from ._startup_log import startup_warning
from ._version import __version__
from .settings import Settings, current_settings

#: instrumentations the guard leaves out: metrics of the host, and HTTP clients (a test client's
#: client span would make the server span under it part of the test's roll-up, not a request of its own)
SKIPPED_INSTRUMENTATIONS = frozenset(
    {"system_metrics", "httpx", "requests", "urllib", "urllib3", "aiohttp-client", "aiohttp_client"}
)
#: the fix said when the processor names no relationship (a Django ORM or a hand-written loop)
GENERIC_FIX = (
    "load the rows in one query instead of one per item (a join or an IN list; Django: select_related or "
    "prefetch_related; SQLAlchemy: selectinload or joinedload)"
)
MAX_LISTED = 10  # queries (distinct statements) listed in a failure message
STATEMENT_CHARS = 200  # of each sanitized statement in a failure message


class TestSink:
    """The derivation thread's sink: the current test's queries and request roll-ups, in end order."""

    takes_calls = False

    def __init__(self) -> None:
        self.queries: list[Query] = []
        self.requests: list[tuple[ReadableSpan, Request, Rollup, str]] = []

    def query(self, span: ReadableSpan, query: Query) -> None:
        self.queries.append(query)

    def request(self, span: ReadableSpan, request: Request, rollup: Rollup, route: str) -> None:
        self.requests.append((span, request, rollup, route))

    def clear(self, unlink: bool) -> None:
        """Forget the last test's queries and requests; ``unlink``: with no exporter left to read them,
        each query's link to its request is cut (a request and its queries are a reference cycle,
        which only the garbage collector would free: many of them make it run more often)."""
        if unlink:
            for _span, request, _rollup, _route in self.requests:
                for query in request.records:
                    query.request = None
                for call in request.calls or ():
                    call.request = None
        self.queries.clear()
        self.requests.clear()

    def after_fork_in_child(self) -> None:
        self.queries.clear()
        self.requests.clear()


class _TestSpan:
    """What the sinks read of a test's root span when it has none (``name``, ``attributes``)."""

    __slots__ = ("name", "attributes", "span_id")

    def __init__(self, name: str, span_id: int) -> None:
        self.name = name
        self.attributes = {"test.case.name": name}
        self.span_id = span_id


@dataclasses.dataclass
class Finding:
    """One request's N+1, as the processor found it."""

    request: str  # what the request was: "GET /orders" (its span name), or the test itself
    summary: str
    repeats: int
    location: str  # file:line (a template's line for a query a template triggered)
    view: str  # the view's file:line when ``location`` is a template's, else ""
    relationship: str
    suggestion: str
    statement: str  # sanitized


class Guard:
    """The pipeline of one pytest process."""

    def __init__(self, rootdir: str, report_path: str | None = None) -> None:
        self.rootdir = rootdir.rstrip(os.sep) + os.sep
        #: without a report, what no verdict reads is not made (see the module's docstring)
        self.lean = not report_path
        if _guard.RERAISE is None:
            _guard.RERAISE = False  # an internal error of ours never fails the user's test
        settings = dataclasses.replace(current_settings(), resource_samples="off")
        self.settings = settings
        self.processor = DbPerfSpanProcessor(settings)
        self.thresholds = self.processor.thresholds
        self.sink = TestSink()
        self.deriver = SpanDeriver(self.thresholds, [self.sink])
        self.processor.attach_deriver(self.deriver.submit)
        name = os.environ.get("OTEL_SERVICE_NAME") or "pytest"
        self.provider = TracerProvider(resource=Resource.create({"service.name": name}), sampler=ALWAYS_ON)
        self.provider.add_span_processor(self.processor)
        self.report: BatchSpanProcessor | None = None
        if report_path:
            from .exporters.otlp_json_file import OTLPJsonFileSpanExporter

            self.report = BatchSpanProcessor(self.processor.wrap_exporter(OTLPJsonFileSpanExporter(report_path)))
            self.provider.add_span_processor(self.report)
        self.tracer = self.provider.get_tracer("otel_dbperf.pytest", __version__)
        self.deferred: list[Any] = []  # instrumentations that wait for their framework's set-up (Django)
        self._install()
        self._root: Any = None
        self._token: Any = None
        self.test_context: Any = None

    # ---- set-up --------------------------------------------------------------------------
    def _install(self) -> None:
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            existing = trace.get_tracer_provider()
            if hasattr(existing, "add_span_processor"):
                startup_warning(
                    "otel-dbperf --dbperf: OpenTelemetry was already set up in this process; the guard adds its "
                    "processor to that tracer provider"
                )
                existing.add_span_processor(self.processor)
                self.tracer = existing.get_tracer("otel_dbperf.pytest", __version__)
            else:
                startup_warning("otel-dbperf --dbperf: another tracer provider is set; the guard sees no spans")
        else:
            trace.set_tracer_provider(self.provider)
        _guard.step("instrumentations", "no spans from the installed instrumentations", self._instrument)

    def _instrument(self) -> None:
        """Every installed instrumentation, as ``opentelemetry-instrument`` loads them (through
        otel-dbperf's distro, whose environment defaults are not applied), but for
        :data:`SKIPPED_INSTRUMENTATIONS` and those ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names.

        Each one is loaded when its library is first imported (the module its entry point names;
        at once when there is no such module), so a suite pays for the libraries it uses only.
        Django's waits for Django's settings (see :meth:`instrument_deferred`)."""
        import wrapt
        from opentelemetry.util._importlib_metadata import entry_points

        disabled = {n.strip() for n in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
        if "*" in disabled:
            return
        hooks: dict[str, Any] = {}
        for entry_point in entry_points(group="opentelemetry_instrumentor"):
            name = entry_point.name
            if name in SKIPPED_INSTRUMENTATIONS or name in disabled:
                continue
            if name == "django":
                self.deferred.append(entry_point)  # its middleware goes into settings that may not exist yet
                continue
            hooks[name] = functools.partial(self._load, entry_point)
        sqlalchemy = hooks.pop("sqlalchemy", None)
        hooks["sqlalchemy"] = functools.partial(self._sqlalchemy, sqlalchemy.args[0] if sqlalchemy else None)
        if self.settings.enabled and "sqlite3" in hooks:
            hooks["sqlite3"] = _then(hooks["sqlite3"], self._sqlite3_shortcuts)
        # engines can exist only when SQLAlchemy was imported before the guard started
        self._engines_before = "sqlalchemy" in sys.modules
        for module, hook in hooks.items():
            if module in sys.modules or find_spec(module) is None:
                hook()
            else:
                wrapt.register_post_import_hook(_ignoring_module(hook), module)

    def _load(self, entry_point: Any, **kwargs: Any) -> None:
        if _supported(entry_point):
            self._load_supported(entry_point, **kwargs)

    def _load_supported(self, entry_point: Any, **kwargs: Any) -> None:
        from .distro import DbPerfDistro

        distro = DbPerfDistro()

        def load() -> None:
            try:
                distro.load_instrumentor(entry_point, skip_dep_check=True, **kwargs)
            except ModuleNotFoundError:
                # as opentelemetry-instrument does: an instrumentor whose library is not installed
                # (one distribution can hold two, e.g. contrib's httpx holds httpx2's) is left out
                return

        _guard.step(f"{entry_point.name} instrumentation", f"no {entry_point.name} spans", load)

    def _sqlalchemy(self, entry_point: Any) -> None:
        """SQLAlchemy: contrib's instrumentation (on the engines made before, too) and otel-dbperf's listeners."""
        from ._sqla import instrument as _sqlalchemy

        engines = _existing_engines() if self._engines_before else []
        extra = {"engines": engines} if engines else {}
        if entry_point is not None and _supported(entry_point):
            self._load_supported(entry_point, **extra)
        else:  # a SQLAlchemy beyond contrib's declared range: otel-dbperf instruments it
            _guard.step("SQLAlchemy instrumentation", "no SQLAlchemy spans", functools.partial(
                _sqlalchemy.ensure_instrumented, self.settings, **extra))  # fmt: skip
        _guard.step("SQLAlchemy listeners setup", "no duplicate counts", self._listeners)

    def _sqlite3_shortcuts(self) -> None:
        from .distro import install_sqlite3_shortcuts

        _guard.step("sqlite3 connection shortcuts", "conn.execute() untraced", install_sqlite3_shortcuts)

    def instrument_deferred(self) -> None:
        """The instrumentations that waited for their framework (Django's settings)."""
        waiting, self.deferred = self.deferred, []
        for entry_point in waiting:
            if _django_configured():
                self._load(entry_point)
            else:
                self.deferred.append(entry_point)

    def _listeners(self) -> None:
        if not self.lean:
            from . import _sqla

            _sqla.install(self.settings, self.thresholds, None, __version__, self.processor)
            return
        # the exact duplicates' digest only (max_duplicates), and SQLAlchemy's connections past the
        # driver's tracing
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        from ._sqla import duplicates

        duplicates.install(self.processor)
        if not event.contains(Engine, "do_connect", _connect_past_driver_tracing):
            event.listen(Engine, "do_connect", _connect_past_driver_tracing)

    # ---- per test ------------------------------------------------------------------------
    def start_test(self, nodeid: str) -> None:
        """The test's root span, and its remote stand-in as the current span."""
        self.deriver.discard()  # the set-up's queries (and the last tear-down's): not the test's, not analysed
        self.sink.clear(unlink=self.lean)
        if self.lean:
            trace_id, span_id = random.getrandbits(128) or 1, random.getrandbits(64) or 1
            self.processor.open_request(span_id)
            self._root = _TestSpan(nodeid, span_id)
        else:
            root = self.tracer.start_span(
                nodeid, context=otel_context.Context(), kind=SpanKind.INTERNAL, attributes={"test.case.name": nodeid}
            )
            ids = root.get_span_context()
            trace_id, span_id = ids.trace_id, ids.span_id
            self._root = root
        stand_in = NonRecordingSpan(SpanContext(trace_id, span_id, True, TraceFlags(TraceFlags.SAMPLED)))
        self.test_context = trace.set_span_in_context(stand_in)
        self._token = otel_context.attach(self.test_context)

    def end_test(self) -> None:
        token, root = self._token, self._root
        self._token = self._root = self.test_context = None
        if token is not None:
            try:
                otel_context.detach(token)
            except Exception:  # noqa: BLE001, S110 - a test that left its own context attached
                pass
        if root.__class__ is _TestSpan:
            self.processor.close_request(root.span_id, root)
        elif root is not None:
            root.end()
        self.deriver.drain()

    def drain(self) -> None:
        self.deriver.drain()

    def flush(self) -> None:
        if self.report is not None:
            self.report.force_flush()

    def shutdown(self) -> None:
        self.deriver.drain()
        if self.report is not None:
            self.report.shutdown()  # type: ignore[no-untyped-call]

    # ---- what a test did -----------------------------------------------------------------
    def findings(self) -> list[Finding]:
        """The N+1 of each request of the current test (drained first)."""
        found = []
        for span, request, rollup, _route in self.sink.requests:
            if not rollup.detected:
                continue
            location, view = "", ""
            if rollup.location is not None:
                location = f"{self.short(rollup.location[0])}:{rollup.location[1]}"
                if len(rollup.location) > 3:
                    view = self.short(str(rollup.location[3]))
            relationship = suggestion = ""
            if rollup.relationship is not None:
                relationship, suggestion = relationship_fix(rollup.relationship)
            statement = ""
            for query in request.records:
                if query.facts is not None and query.facts.fingerprint == rollup.fingerprint:
                    statement = query.facts.sanitized
                    break
            name = "the test itself" if (span.attributes or {}).get("test.case.name") else span.name
            found.append(
                Finding(name, rollup.summary, rollup.repeats, location, view, relationship, suggestion, statement)
            )
        return found

    def duplicates(self) -> list[Query]:
        return [q for q in self.sink.queries if q.duplicate]

    def short(self, path: str) -> str:
        """``path`` relative to the rootdir when under it."""
        return path[len(self.rootdir) :] if path.startswith(self.rootdir) else path

    # ---- messages ------------------------------------------------------------------------
    def n_plus_one_message(self, findings: list[Finding]) -> str:
        lines = [f"otel-dbperf: N+1 queries in this test (threshold {self.thresholds.n_plus_one} repeats):"]
        for f in findings:
            lines.append(f"  {f.request}: {f.summary or 'a query'} repeated {f.repeats} times")
            if f.location:
                lines.append(f"    at {f.location}" + (f" (template; view {f.view})" if f.view else ""))
            if f.relationship:
                lines.append(f"    relationship: {f.relationship}")
                lines.append(f"    fix: {f.suggestion}")
            else:
                lines.append(f"    fix: {GENERIC_FIX}")
            if f.statement:
                lines.append(f"    statement: {_cut(f.statement)}")
        lines.append("(allow it with @pytest.mark.dbperf(allow_n_plus_one=True))")
        return "\n".join(lines)

    def queries_message(self, headline: str, queries: list[Query]) -> str:
        """``headline`` and the queries, one line per distinct statement: count, location, sanitized text."""
        groups: dict[str, list[Any]] = {}
        for query in queries:
            facts = query.facts
            key = facts.fingerprint if facts is not None else ""
            entry = groups.get(key)
            if entry is None:
                entry = groups[key] = [0, facts.sanitized if facts is not None else "(no statement)", {}]
            entry[0] += 1
            where = self._where(query.location)
            entry[2][where] = entry[2].get(where, 0) + 1
        lines = [headline]
        ordered = sorted(groups.values(), key=lambda e: -e[0])
        for count, text, places in ordered[:MAX_LISTED]:
            at = ", ".join(p if n == 1 else f"{p} ({n}x)" for p, n in places.items())
            lines.append(f"  {count:>3} x {_cut(text)}")
            lines.append(f"        at {at}")
        if len(ordered) > MAX_LISTED:
            lines.append(f"  ... and {len(ordered) - MAX_LISTED} more distinct statements")
        return "\n".join(lines)

    def _where(self, location: Any) -> str:
        if not location:
            return "?"
        text = f"{self.short(str(location[0]))}:{location[1]}"
        return f"{text} (template; view {self.short(str(location[3]))})" if len(location) > 3 else text


def _then(first: Any, second: Any) -> Any:
    def both() -> None:
        first()
        second()

    return both


def _ignoring_module(hook: Any) -> Any:
    def on_import(_module: Any) -> None:
        hook()

    return on_import


def _existing_engines() -> list[Any]:
    """The SQLAlchemy engines made before the guard started (the fixture or marker alone starts it at
    the first test that uses it; an app module imported earlier made its engine then)."""
    engine_class = getattr(sys.modules.get("sqlalchemy.engine"), "Engine", None)
    if engine_class is None:
        return []
    import gc

    return [obj for obj in gc.get_objects() if isinstance(obj, engine_class)]


def _supported(entry_point: Any) -> bool:
    """Whether the library an instrumentation needs is installed in a version it supports (checked
    when that library is first imported, not at start-up: most installed ones are never used)."""
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return True
    from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts

    return get_dist_dependency_conflicts(dist) is None


def _connect_past_driver_tracing(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
    """SQLAlchemy's ``do_connect`` (the guard without a report): the driver's own ``connect`` when
    contrib's DB-API instrumentation wraps it and the dialect connects the default way, so that the
    connection makes no driver span under SQLAlchemy's; None (SQLAlchemy connects as before) otherwise."""
    try:
        if type(dialect).connect is not _default_connect():
            return None
        dbapi = getattr(dialect, "loaded_dbapi", None) or getattr(dialect, "dbapi", None)
        original = contrib_connect_original(getattr(dbapi, "connect", None))
    except Exception as exc:  # noqa: BLE001 - the guard's own bug: SQLAlchemy connects as before
        _guard.internal_error("pytest guard: connect", exc)
        return None
    if original is None:
        return None
    return original(*cargs, **cparams)


def _default_connect() -> Any:
    from sqlalchemy.engine.default import DefaultDialect

    return DefaultDialect.connect


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= STATEMENT_CHARS else text[: STATEMENT_CHARS - 3] + "..."


def _django_configured() -> bool:
    """Whether Django's settings exist (instrumenting before would configure empty ones)."""
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        return True  # the instrumentation reads them from that module
    if "django" not in sys.modules:
        return False
    try:
        from django.conf import settings

        return bool(settings.configured)
    except Exception:  # noqa: BLE001 - no Django, or settings that fail: not now
        return False


def build(rootdir: str, report_path: str | None) -> Guard | None:
    settings: Settings = current_settings()
    if not settings.enabled:
        startup_warning("otel-dbperf --dbperf: DBPERF_ENABLED=false, the guard is off")
        return None
    return Guard(rootdir, report_path)
