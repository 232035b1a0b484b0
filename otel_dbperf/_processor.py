"""The span processor (request thread) and the exporter wrapper (export thread).

Request thread, per DB span: a CPU-clock read at start; at end a CPU-clock read,
the slow flag, one cached frame walk, and an append to the request's state.
Everything costlier (sanitizing, fingerprints, N+1 verdicts, new attributes)
happens on the export thread in :class:`EnrichingSpanExporter`, which gives the
exporter the span with the new attributes (the ``ReadableSpan`` snapshot made for
``on_end`` is updated in place when there is one exporter, copied when several).

State lives in dicts keyed by span id, never on the span objects: adding an
attribute to an SDK span object changes its instance layout and makes every
later attribute access on it slower (CPython's specialised attribute lookups miss).
"""

from __future__ import annotations

import sys
import threading
import weakref
from _thread import get_ident
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode, get_current_span

from . import _forksafe
from . import attributes as A
from ._errors import scrub_error_text, scrub_traceback
from ._guard import internal_error
from ._location import SETUP, AppCode, lazy_loaded_relationship, location_of
from ._nosql import KIND_NOSQL, KIND_NOSQL_FRAMEWORK, KIND_QUERY, KIND_SETUP, NOSQL_SYSTEMS, add_call, nosql_rollup
from ._resources import rss_bytes, thread_time_ns
from ._sql import OPERATIONS, Analysis, analyze
from ._suggest import relationship_fix
from .settings import Settings

_CLIENT = SpanKind.CLIENT
_ERROR = StatusCode.ERROR
_ERROR_TYPE = "error.type"
_DB_SYSTEM, _DB_SYSTEM_NAME = A.DB_SYSTEM, A.DB_SYSTEM_NAME
_DB_STATEMENT, _DB_QUERY_TEXT = A.DB_STATEMENT, A.DB_QUERY_TEXT
_ORM_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
_MAX_QUERIES_PER_REQUEST = 10_000  # queries of one request kept for its N+1 analysis
_MAX_PENDING = 100_000  # open spans / spans awaiting export that are tracked at once
_EXPORT_LOCK = threading.Lock()  # export threads only: never taken on a request thread
_OVERFLOW_LOCK = threading.Lock()  # a request past the cap of records

_processors: weakref.WeakSet[DbPerfSpanProcessor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child: fresh locks (the parent's export thread may have held them), and the
    parent's open and finished spans forgotten (they are the parent's to export). A span the
    child ends that it has no record of is exported with its statement sanitized on the spot."""
    global _EXPORT_LOCK, _OVERFLOW_LOCK
    _EXPORT_LOCK = threading.Lock()
    _OVERFLOW_LOCK = threading.Lock()
    for processor in list(_processors):
        processor._open = {}  # noqa: SLF001
        processor._done = {}  # noqa: SLF001


_forksafe.register(_after_fork_in_child)

# A DB span's record, built once on the request thread (a tuple: made in C, no __init__):
# (cpu_ns (-1: not sampled), duration_ns, slow, statement, location, stacktrace, request,
#  nested: a driver-level span inside an ORM-level one, which is not counted twice,
#  system: db.system.name / db.system, the dialect the statement is sanitized by,
#  relationship: the SQLAlchemy relationship this query lazily loaded, or None,
#  params: keyed digest of the query's parameters (see _duplicates), b"" for none, None: not taken,
#  rss_delta: the process RSS change in bytes from the span's start to its end, None: not sampled,
#  kind: KIND_QUERY a SQL query of the application; KIND_SETUP a connection span or a statement of the
#  framework's connection setup (not a query: not counted, no slow flag); KIND_NOSQL a call to a
#  key-value or document store (its own roll-up, see _nosql); KIND_NOSQL_FRAMEWORK one with no
#  application frame on the stack (a worker's broker and result-backend traffic): not rolled up)
# cpu_ns and rss_delta are sampled only under DBPERF_RESOURCE_SAMPLES=query.
_CPU, _DUR, _SLOW, _STMT, _LOC, _STACK, _REQ, _NESTED, _SYS, _REL, _PARAMS, _RSS_DELTA, _KIND = range(13)
Record = tuple[Any, ...]  # the layout above; a plain tuple because a NamedTuple costs ~30x to build


def _attr_dict(attrs: Any) -> Mapping[str, Any]:
    """The plain dict behind the SDK's BoundedAttributes (read-only use), else the mapping."""
    inner = getattr(attrs, "_dict", None)
    return inner if isinstance(inner, dict) else (attrs or {})


def _bounded(attrs: dict[str, Any], original: Any) -> BoundedAttributes:
    """``attrs`` as the SDK's attribute type, keeping the original's dropped count and length limit.

    Built without the SDK's per-value validation: the values otel-dbperf adds are
    valid by construction, and the others were validated when the span set them.
    """
    bounded = BoundedAttributes(immutable=False)
    maxlen = getattr(original, "maxlen", None)
    dropped = getattr(original, "dropped", 0)
    if maxlen is not None and len(attrs) > maxlen:  # the span's attribute limit also bounds ours
        for key in list(attrs)[maxlen:]:
            del attrs[key]
            dropped += 1
    bounded._dict = attrs  # noqa: SLF001
    bounded.maxlen = maxlen
    bounded.dropped = dropped
    bounded._immutable = True  # noqa: SLF001
    return bounded


def _trim(table: dict[int, Any]) -> None:
    """Bound a pending table: drop its oldest tenth (spans that never ended or were never exported)."""
    for key in list(islice(table, len(table) // 10 + 1)):
        table.pop(key, None)


class _Request:
    """Per local-root state: one request's DB records, rolled up on the export thread."""

    __slots__ = (
        "root_id", "records", "overflow", "open_orm", "cpu0", "cpu_ns", "rss0", "rss",
        "cursor", "fp_counts", "seen", "dup_keys", "dup_count", "dup_ns", "extras", "calls",
    )  # fmt: skip

    def __init__(self, root_id: int, cpu0: int, rss0: int) -> None:
        self.root_id = root_id
        self.records: list[Record] = []  # appended by request threads (atomic), read by index
        self.overflow = [0, 0, 0]  # beyond the cap only totals are kept: count, duration_ns, slow
        self.open_orm = 0  # ORM-level DB spans in flight (driver spans inside them are not counted twice)
        self.cpu0 = cpu0
        self.cpu_ns = 0
        self.rss0 = rss0
        self.rss = 0
        # export side, under _EXPORT_LOCK
        self.cursor = 0  # records[:cursor] are counted in fp_counts
        self.fp_counts: dict[str, int] = {}
        self.seen: dict[int, tuple[str, str, int, bool]] = {}  # id(record) -> (fingerprint, summary, repeat, duplicate)
        self.dup_keys: set[tuple[str, bytes]] = set()  # (statement, parameter digest) of the SELECTs so far
        self.dup_count = 0  # SELECTs that exactly repeat an earlier one of the request
        self.dup_ns = 0  # and their DB time
        #: attributes other hooks add to the request's root span (see :func:`current_request`)
        self.extras: dict[str, Any] | None = None
        #: the request's calls to key-value and document stores (see _nosql), None: none yet
        self.calls: list[Record] | None = None

    def add(self, key: str, value: float) -> None:
        """Add ``value`` to the request attribute ``key`` (request thread; a hook of another concern:
        pool waits, transactions). The sum lands on the root span when it is exported."""
        extras = self.extras
        if extras is None:
            extras = self.extras = {}
        extras[key] = extras.get(key, 0) + value

    def set_max(self, key: str, value: float) -> None:
        """Keep the largest ``value`` seen for the request attribute ``key``."""
        extras = self.extras
        if extras is None:
            extras = self.extras = {}
        if value > extras.get(key, value - 1):
            extras[key] = value


def current_request() -> _Request | None:
    """The request (local root) the current span belongs to, or None outside any request.

    For hooks that run on the request thread outside a DB span's end (SQLAlchemy pool and
    transaction events): they add their per-request figures with :meth:`_Request.add`.
    """
    try:
        span = get_current_span()
        context = span.get_span_context()
        if not context.is_valid:
            return None
        for processor in list(_processors):
            entry = processor._open.get(context.span_id)  # noqa: SLF001
            if entry is None:
                continue
            request = entry if entry.__class__ is _Request else entry[1]
            if request is not None:
                return request  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001
        internal_error("current_request", exc)
    return None


class DbPerfSpanProcessor(SpanProcessor):
    """Request-thread half: measures DB spans and keeps per-request state.

    Register it on the ``TracerProvider`` *before* the export processors, and wrap
    their exporters with :meth:`wrap_exporter`.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._slow_ns = int(settings.slow_query_threshold_ms * 1_000_000)
        self._stack_ns = int(settings.stacktrace_threshold_ms * 1_000_000)
        self._app = AppCode(settings.app_paths) if settings.code_location else None
        self._resources = settings.resource_samples != "off"  # CPU time and RSS per request
        self._per_query = settings.resource_samples == "query"  # and per DB span
        # span id -> (samples, request, orm, parameter digest) for client spans, or the _Request of a
        # request's span; samples: (thread CPU ns, RSS bytes) at the start under DBPERF_RESOURCE_SAMPLES=query, else 0
        self._open: dict[int, Any] = {}
        # thread id -> ORM-level client spans open on it outside any request
        self._loose_orm: dict[int, int] = {}
        # span id -> Record or _Request, for the exporters
        self._done: dict[int, Any] = {}
        self._consumers = 0
        # SpanDeriver.submit once set up: gets (span, record or _Request), nested driver spans excluded
        self._submit: Any = None
        _processors.add(self)

    def attach_deriver(self, submit: Any) -> None:
        """Hand every finished DB span and request root to ``submit(span, payload)`` (metrics)."""
        self._submit = submit

    def wrap_exporter(self, exporter: SpanExporter) -> EnrichingSpanExporter:
        """The exporter that adds this processor's attributes before ``exporter`` sends spans."""
        self._consumers += 1
        return EnrichingSpanExporter(exporter, self)

    # The hooks read the SDK span's fields directly (its properties cost a call each),
    # and SpanContext by index: it is a tuple (trace_id, span_id, is_remote, ...).
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            span_id = span._context[1]  # type: ignore[index]  # noqa: SLF001
            open_ = self._open
            if len(open_) >= _MAX_PENDING:
                _trim(open_)
            parent = span._parent  # noqa: SLF001
            if parent is None or parent[2]:  # a local root
                if span._kind is _CLIENT:  # noqa: SLF001 - a DB span outside any request
                    open_[span_id] = self._loose(span)
                elif self._resources:
                    open_[span_id] = _Request(span_id, thread_time_ns(), rss_bytes())
                else:
                    open_[span_id] = _Request(span_id, 0, 0)
                return
            entry = open_.get(parent[1])
            if entry is None:
                if span._kind is _CLIENT:  # noqa: SLF001
                    open_[span_id] = self._loose(span)
                return
            request = entry if entry.__class__ is _Request else entry[1]
            if span._kind is _CLIENT:  # noqa: SLF001
                if request is None:
                    open_[span_id] = self._loose(span)
                    return
                orm = False
                if request is not None:
                    scope = span._instrumentation_scope  # noqa: SLF001
                    if scope is not None and scope.name == _ORM_SCOPE:
                        orm = True
                        request.open_orm += 1
                open_[span_id] = ((thread_time_ns(), rss_bytes()) if self._per_query else 0, request, orm, None)
            elif request is not None:
                open_[span_id] = request
        except Exception as exc:  # noqa: BLE001
            internal_error("on_start", exc)

    def _loose(self, span: Span) -> tuple[Any, ...]:
        """The open entry of a client span outside any request. An ORM-level one is counted open on
        its thread, so a driver span inside it is nested there too (one statement, one count)."""
        samples = (thread_time_ns(), rss_bytes()) if self._per_query else 0
        scope = span._instrumentation_scope  # noqa: SLF001
        if scope is not None and scope.name == _ORM_SCOPE:
            loose = self._loose_orm
            thread = get_ident()
            loose[thread] = loose.get(thread, 0) + 1
            return (samples, None, True, None)
        return (samples, None, False, None)

    def _on_ending(self, span: Span) -> None:
        try:
            span_id = span._context[1]  # type: ignore[index]  # noqa: SLF001
            entry = self._open.pop(span_id, None)
            if entry is None:
                return
            if entry.__class__ is not tuple:
                if entry.root_id == span_id:
                    if self._resources:
                        entry.cpu_ns = thread_time_ns() - entry.cpu0
                        entry.rss = rss_bytes()
                    self._publish(span_id, entry)
                    submit = self._submit
                    if submit is not None:
                        submit(span, entry)
                return
            if self._per_query:
                cpu0, rss0 = entry[0]
                cpu_ns, rss_delta = thread_time_ns() - cpu0, rss_bytes() - rss0
            else:
                cpu_ns, rss_delta = -1, None
            request = entry[1]
            if entry[2]:
                if request is not None:
                    request.open_orm -= 1
                else:
                    _loose_ended(self._loose_orm)
            attrs = span._attributes._dict  # type: ignore[union-attr]  # noqa: SLF001 - read-only; frozen by now
            if _DB_SYSTEM_NAME not in attrs and _DB_SYSTEM not in attrs:
                return  # an HTTP or other client span: not ours
            system = attrs.get(_DB_SYSTEM_NAME) or attrs.get(_DB_SYSTEM)
            duration = span._end_time - span._start_time  # type: ignore[operator]  # noqa: SLF001
            slow = duration >= self._slow_ns
            if span._status.status_code is _ERROR and _ERROR_TYPE not in attrs:  # noqa: SLF001
                _set_error_type(attrs)
            statement = attrs.get(_DB_QUERY_TEXT) or attrs.get(_DB_STATEMENT)
            location = None
            stack = ""
            relationship = None
            kind = KIND_NOSQL if system in NOSQL_SYSTEMS else KIND_QUERY if statement is not None else KIND_SETUP
            app = self._app
            if app is not None:
                frame = sys._getframe(3)  # noqa: SLF001 - the caller of Span.end
                found, lazy, hint = app.walk(frame)
                if lazy is not None:
                    relationship = lazy_loaded_relationship(lazy)
                if hint is SETUP:
                    kind = KIND_SETUP
                    hint = None
                if found is not None:
                    location = location_of(found, hint)
                    if slow and duration >= self._stack_ns:
                        settings = self.settings
                        stack = app.stacktrace(frame, settings.stacktrace_max_frames, settings.stacktrace_source)
                elif kind == KIND_NOSQL:
                    kind = KIND_NOSQL_FRAMEWORK  # no application frame: the framework's own traffic
            if entry[2]:
                nested = False
            elif request is not None:
                nested = request.open_orm > 0
            else:
                nested = self._loose_orm.get(get_ident(), 0) > 0
            record = (
                cpu_ns,
                duration,
                slow,
                statement,
                location,
                stack,
                request,
                nested,
                system,
                relationship,
                entry[3],
                rss_delta,
                kind,
            )
            if kind == KIND_QUERY:
                if request is not None and not nested:
                    if len(request.records) < _MAX_QUERIES_PER_REQUEST:
                        request.records.append(record)
                    else:
                        _count_overflow(request, record)
            elif kind == KIND_NOSQL and request is not None:
                add_call(request, record)
            self._publish(span_id, record)
            submit = self._submit
            # connection spans and setup statements are no operation of the application
            if submit is not None and kind != KIND_SETUP and not nested:
                submit(span, record)
        except Exception as exc:  # noqa: BLE001
            internal_error("_on_ending", exc)

    def _publish(self, span_id: int, payload: Any) -> None:
        consumers = self._consumers
        if consumers:
            done = self._done
            if len(done) >= _MAX_PENDING:
                _trim(done)
            done[span_id] = payload if consumers == 1 else [payload, consumers]

    def take(self, span_id: int) -> Any:
        """Export side: the payload of a finished span (the last consumer removes it)."""
        if self._consumers == 1:
            return self._done.pop(span_id, None)
        with _EXPORT_LOCK:
            slot = self._done.get(span_id)
            if slot is None:
                return None
            if slot.__class__ is not list:  # published before a second exporter was wrapped
                del self._done[span_id]
                return slot
            slot[1] -= 1
            if slot[1] <= 0:
                del self._done[span_id]
            return slot[0]


def _set_error_type(attrs: dict[str, Any]) -> None:
    """semconv ``error.type`` on a failed DB span: the DB-API exception being handled right now.

    The SQLAlchemy instrumentation ends a failed query's span from its ``handle_error``
    listener, inside SQLAlchemy's ``except`` block, so the exception is still current.
    """
    exc = sys.exc_info()[1]
    if exc is not None:
        kind = type(exc)
        module = kind.__module__
        attrs[_ERROR_TYPE] = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _loose_ended(loose: dict[int, int]) -> None:
    """An ORM-level client span outside any request ended on this thread."""
    thread = get_ident()
    left = loose.get(thread, 0) - 1
    if left > 0:
        loose[thread] = left
    else:
        loose.pop(thread, None)


def _count_overflow(request: _Request, record: Record) -> None:
    """Past the cap a request keeps running totals instead of every record."""
    with _OVERFLOW_LOCK:
        totals = request.overflow
        totals[0] += 1
        totals[1] += record[_DUR]
        totals[2] += record[_SLOW]


class EnrichingSpanExporter(SpanExporter):
    """Export-thread half: adds the dbperf attributes, then delegates to ``exporter``."""

    def __init__(self, exporter: SpanExporter, processor: DbPerfSpanProcessor) -> None:
        self._exporter = exporter
        self._processor = processor
        self._settings = processor.settings
        self._n1 = processor.settings.n_plus_one_threshold
        #: DB spans exported without their record (evicted, ended after a fork, begun before
        #: otel-dbperf): statement sanitized on the spot
        self.unmeasured = 0
        #: DB spans dropped because even that failed (an internal error): never exported raw
        self.dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        out = []
        for span in spans:
            enriched = self._enrich(span)
            if enriched is not None:
                out.append(enriched)
        return self._exporter.export(out)

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def _enrich(self, span: ReadableSpan) -> ReadableSpan | None:
        """The span to export; None drops it (a DB span that could not be made safe)."""
        try:
            payload = self._processor.take(span._context.span_id)  # type: ignore[union-attr]  # noqa: SLF001
            if payload.__class__ is tuple:
                return self._enrich_query(span, payload)
            if payload.__class__ is _Request:
                return self._enrich_root(span, payload)
            attrs = _attr_dict(span._attributes)  # noqa: SLF001
            if _DB_SYSTEM_NAME in attrs or _DB_SYSTEM in attrs:
                return self._enrich_unmeasured(span, attrs)
            if span._status.status_code is StatusCode.ERROR or span._events:  # noqa: SLF001
                return self._scrub(span, None, None)
        except Exception as exc:  # noqa: BLE001
            internal_error("export", exc)
            return self._fail_closed(span)
        return span

    def _enrich_unmeasured(self, span: ReadableSpan, original: Mapping[str, Any]) -> ReadableSpan:
        """A DB span without its record: never its raw statement. Sanitized here, with the
        fingerprint, summary and slow flag that the span alone gives."""
        self.unmeasured += 1
        attrs = dict(original)
        statement = attrs.get(_DB_QUERY_TEXT) or attrs.get(_DB_STATEMENT)
        _, name = self._statement_attributes(
            span, attrs, statement, attrs.get(_DB_SYSTEM_NAME) or attrs.get(_DB_SYSTEM)
        )
        start, end = span._start_time, span._end_time  # noqa: SLF001
        if isinstance(start, int) and isinstance(end, int) and statement is not None:  # a connection: no query
            attrs[A.QUERY_SLOW] = end - start >= self._processor._slow_ns  # noqa: SLF001
        return self._scrub(span, attrs, None, name)

    def _fail_closed(self, span: ReadableSpan) -> ReadableSpan | None:
        """After an internal error: no statement of a DB span, no error text or event that was not
        scrubbed; the span goes out without them, or not at all."""
        try:
            attrs = _attr_dict(span._attributes)  # noqa: SLF001
            status = span._status  # noqa: SLF001
            is_db = _DB_SYSTEM_NAME in attrs or _DB_SYSTEM in attrs
            statement = is_db and (_DB_QUERY_TEXT in attrs or _DB_STATEMENT in attrs)
            if not (statement or span._events or status.description):  # noqa: SLF001
                return span
            kept = {k: v for k, v in attrs.items() if not (statement and k in (_DB_QUERY_TEXT, _DB_STATEMENT))}
            name = span._name  # noqa: SLF001
            if is_db:  # contrib names DB spans after the statement's first piece, which may hold a literal
                if not _keyword_led(name):
                    system = attrs.get(_DB_SYSTEM_NAME) or attrs.get(_DB_SYSTEM)
                    name = str(system) if isinstance(system, str) and system.isidentifier() else "DB"
                for key in _OPERATION_KEYS:
                    if key in kept and not _keyword_led(kept[key]):
                        del kept[key]
            return ReadableSpan(
                name=name,
                context=span._context,  # noqa: SLF001
                parent=span._parent,  # noqa: SLF001
                resource=span._resource,  # noqa: SLF001
                attributes=_bounded(kept, span._attributes),  # noqa: SLF001
                events=(),  # exception events quote statements and values
                links=span._links,  # noqa: SLF001
                kind=span._kind,  # noqa: SLF001
                status=Status(status.status_code),
                start_time=span._start_time,  # noqa: SLF001
                end_time=span._end_time,  # noqa: SLF001
                instrumentation_scope=span._instrumentation_scope,  # noqa: SLF001
            )
        except Exception:  # noqa: BLE001 - nothing safe can be made of it: dropped
            self.dropped += 1
            return None

    def _advance(self, request: _Request) -> None:
        """Fingerprint the request's records in order and count repeats per fingerprint."""
        max_length = self._settings.statement_max_length
        with _EXPORT_LOCK:
            records = request.records
            counts = request.fp_counts
            seen = request.seen
            end = len(records)
            for i in range(request.cursor, end):
                record = records[i]
                statement = record[_STMT]
                duplicate = False
                if isinstance(statement, str):
                    analysis = analyze(statement, max_length, record[_SYS])
                    fingerprint, summary = analysis.fingerprint, analysis.summary
                    params = record[_PARAMS]
                    if params is not None and analysis.operation == "SELECT":
                        key = (statement, params)
                        if key in request.dup_keys:
                            duplicate = True
                            request.dup_count += 1
                            request.dup_ns += record[_DUR]
                        else:
                            request.dup_keys.add(key)
                else:
                    fingerprint, summary = "", ""
                repeat = counts[fingerprint] = counts.get(fingerprint, 0) + 1
                seen[id(record)] = (fingerprint, summary, repeat, duplicate)
            request.cursor = end

    def _statement_attributes(
        self, span: ReadableSpan, attrs: dict[str, Any], statement: Any, system: Any
    ) -> tuple[Analysis | None, str | None]:
        """The statement's sanitized text, fingerprint and summary into ``attrs``; its analysis and
        the span's new name (None: keep it). A statement that is not text is not exported."""
        settings = self._settings
        if not isinstance(statement, str):
            if settings.sanitize_statements:
                for key in (_DB_QUERY_TEXT, _DB_STATEMENT):
                    attrs.pop(key, None)
            return None, None
        analysis = analyze(statement, settings.statement_max_length, system)
        name = None
        if settings.sanitize_statements:
            for key in (_DB_QUERY_TEXT, _DB_STATEMENT):
                if key in attrs:
                    attrs[key] = analysis.sanitized
            name = _statement_free_names(span, attrs, analysis, statement)
        attrs[A.QUERY_FINGERPRINT] = analysis.fingerprint
        if analysis.summary and A.DB_QUERY_SUMMARY not in attrs:
            attrs[A.DB_QUERY_SUMMARY] = analysis.summary
        return analysis, name

    def _enrich_query(self, span: ReadableSpan, record: Record) -> ReadableSpan:
        settings = self._settings
        attrs = dict(_attr_dict(span._attributes))  # noqa: SLF001
        analysis, name = self._statement_attributes(span, attrs, record[_STMT], record[_SYS])
        kind = record[_KIND]
        slow = record[_SLOW]
        if kind == KIND_SETUP:  # a connection span or setup statement: not a query, never slow
            slow = False
            if record[_STMT] is not None:
                attrs[A.QUERY_SETUP] = True
        elif kind == KIND_NOSQL_FRAMEWORK:  # the framework's own call (a worker's blocking BRPOP): never slow
            slow = False
            attrs[A.QUERY_NOSQL] = attrs[A.QUERY_FRAMEWORK] = True
        else:
            attrs[A.QUERY_SLOW] = slow
            if kind == KIND_NOSQL:
                attrs[A.QUERY_NOSQL] = True
        if record[_CPU] >= 0:
            attrs[A.CPU_TIME_MS] = record[_CPU] / 1e6
        location = record[_LOC]
        if location is not None:
            attrs[A.CODE_FILE_PATH], attrs[A.CODE_LINE_NUMBER], attrs[A.CODE_FUNCTION_NAME] = location[:3]
            if len(location) > 3:
                attrs[A.CODE_PYTHON_LOCATION] = location[3]
        if record[_STACK]:
            attrs[A.CODE_STACKTRACE] = record[_STACK]
        if record[_NESTED]:
            attrs[A.QUERY_NESTED] = True
        request = record[_REQ]
        if request is not None and kind == KIND_QUERY:
            seen = request.seen.get(id(record))
            if seen is None:
                self._advance(request)
                seen = request.seen.get(id(record))
            if seen is not None:  # None: not counted (nested, or over the cap)
                if seen[2] >= self._n1:
                    attrs[A.N_PLUS_ONE] = True
                if seen[3]:
                    attrs[A.QUERY_DUPLICATE] = True
        extra_events: list[Event] | None = None
        if slow:
            event_attrs: dict[str, Any] = {
                A.EVENT_DURATION_MS: record[_DUR] / 1e6,
                A.EVENT_THRESHOLD_MS: settings.slow_query_threshold_ms,
            }
            if analysis is not None:
                event_attrs[A.QUERY_FINGERPRINT] = analysis.fingerprint
            if location is not None:
                event_attrs[A.CODE_FILE_PATH], event_attrs[A.CODE_LINE_NUMBER] = location[0], location[1]
            extra_events = [Event(A.EVENT_SLOW_QUERY, event_attrs, timestamp=span._end_time)]  # noqa: SLF001
        return self._scrub(span, attrs, extra_events, name)

    def _enrich_root(self, span: ReadableSpan, request: _Request) -> ReadableSpan:
        self._advance(request)
        records = request.records
        count, db_ns, slow = len(records), 0, 0
        for record in records:
            db_ns += record[_DUR]
            slow += record[_SLOW]
        more, more_ns, more_slow = request.overflow
        count, db_ns, slow = count + more, db_ns + more_ns, slow + more_slow
        attrs = dict(_attr_dict(span._attributes))  # noqa: SLF001
        attrs[A.DB_QUERY_COUNT] = count
        attrs[A.DB_SLOW_QUERY_COUNT] = slow
        attrs[A.DB_DURATION_MS] = db_ns / 1e6
        attrs[A.DB_DUPLICATE_COUNT] = request.dup_count
        attrs[A.DB_DUPLICATE_DURATION_MS] = request.dup_ns / 1e6
        worst_fp, worst = "", 0
        for fp, repeats in request.fp_counts.items():
            if repeats > worst and fp:
                worst_fp, worst = fp, repeats
        detected = worst >= self._n1
        attrs[A.N_PLUS_ONE_DETECTED] = detected
        if detected:
            first = next(r for r in records if request.seen[id(r)][0] == worst_fp)
            attrs[A.N_PLUS_ONE_FINGERPRINT] = worst_fp
            attrs[A.N_PLUS_ONE_REPEAT_COUNT] = worst
            summary = request.seen[id(first)][1]
            if summary:
                attrs[A.N_PLUS_ONE_QUERY_SUMMARY] = summary
            if first[_LOC] is not None:
                attrs[A.N_PLUS_ONE_CODE_LOCATION] = f"{first[_LOC][0]}:{first[_LOC][1]}"
                if len(first[_LOC]) > 3:
                    attrs[A.N_PLUS_ONE_PYTHON_LOCATION] = first[_LOC][3]
            seen = request.seen
            lazy = next(
                (r[_REL] for r in records if r[_REL] is not None and seen.get(id(r), ("",))[0] == worst_fp), None
            )
            if lazy is not None:
                relationship, suggestion = relationship_fix(lazy)
                if relationship:
                    attrs[A.N_PLUS_ONE_RELATIONSHIP] = relationship
                    attrs[A.N_PLUS_ONE_SUGGESTION] = suggestion
        if self._processor._resources:  # noqa: SLF001
            attrs[A.CPU_TIME_MS] = request.cpu_ns / 1e6
            attrs[A.MEMORY_RSS_BYTES] = request.rss
            attrs[A.MEMORY_RSS_DELTA_BYTES] = request.rss - request.rss0
        if request.extras:
            attrs.update(request.extras)
        if request.calls:
            attrs.update(nosql_rollup(request.calls, self._n1, self._settings.statement_max_length))
        return self._scrub(span, attrs, None)

    def _scrub(
        self,
        span: ReadableSpan,
        attrs: dict[str, Any] | None,
        extra_events: list[Event] | None,
        name: str | None = None,
    ) -> ReadableSpan:
        """``span`` with ``attrs``, ``extra_events``, and error texts cleaned of parameter values.

        The ``ReadableSpan`` handed to ``on_end`` is a snapshot made for that call; with
        one exporter it is updated in place (no copy on the export path), with several
        each gets its own copy.
        """
        status = span._status  # noqa: SLF001
        statement = _statement(attrs if attrs is not None else span._attributes)  # noqa: SLF001
        if status.status_code is StatusCode.ERROR and status.description:
            clean = scrub_error_text(status.description, statement)
            if clean != status.description:
                status = Status(StatusCode.ERROR, clean)
        original: Sequence[Event] = span._events  # noqa: SLF001
        events = original
        if events and any(e.name == "exception" for e in events):
            events = [_scrub_event(e, statement) if e.name == "exception" else e for e in events]
        if extra_events:
            events = [*events, *extra_events]
        if attrs is None:
            if status is span._status and events is original:  # noqa: SLF001
                return span
            attrs = dict(_attr_dict(span._attributes))  # noqa: SLF001
        bounded = _bounded(attrs, span._attributes)  # noqa: SLF001
        if self._processor._consumers == 1:  # noqa: SLF001
            if name is not None:
                span._name = name  # noqa: SLF001
            span._attributes = bounded  # noqa: SLF001
            span._events = events  # noqa: SLF001
            span._status = status  # noqa: SLF001
            return span
        return ReadableSpan(
            name=span._name if name is None else name,  # noqa: SLF001
            context=span._context,  # noqa: SLF001
            parent=span._parent,  # noqa: SLF001
            resource=span._resource,  # noqa: SLF001
            attributes=bounded,
            events=events,
            links=span._links,  # noqa: SLF001
            kind=span._kind,  # noqa: SLF001
            status=status,
            start_time=span._start_time,  # noqa: SLF001
            end_time=span._end_time,  # noqa: SLF001
            instrumentation_scope=span._instrumentation_scope,  # noqa: SLF001
        )


_OPERATION_KEYS = ("db.operation.name", "db.operation")


def _statement_free_names(span: ReadableSpan, attrs: dict[str, Any], analysis: Any, statement: str) -> str | None:
    """Rewrite the span name and ``db.operation.name`` when they carry statement text; the new name or None.

    The contrib instrumentations name a DB span after the statement's first whitespace-separated
    piece (``VALUES('x')``, ``SELECT'x'``, ``SELECT/*x*/1``, a comment's words), SQLAlchemy's
    followed by the database name, asyncpg's cursors after ``CURSOR: ``. Kept when that piece is
    an operation keyword or no part of the statement; else replaced by the summary (or the
    operation, or ``DB``).
    """
    for key in _OPERATION_KEYS:
        value = attrs.get(key)
        if isinstance(value, str) and _from_statement(value.partition(" ")[0], statement):
            if analysis.operation:
                attrs[key] = analysis.operation
            else:
                del attrs[key]
    name = span._name  # noqa: SLF001
    if not isinstance(name, str):
        return None
    prefix = "CURSOR: " if name.startswith("CURSOR: ") else ""
    if not _from_statement(name[len(prefix) :].partition(" ")[0], statement):
        return None
    return prefix + (analysis.summary or analysis.operation or "DB")


def _keyword_led(name: Any) -> bool:
    """Whether a span or operation name starts with a plain operation keyword (not statement text)."""
    if not isinstance(name, str):
        return False
    piece = name.partition(" ")[0]
    return piece.isascii() and piece.isalpha() and piece.lower() in OPERATIONS


def _from_statement(piece: str, statement: str) -> bool:
    """Whether a name's first piece is statement text other than a plain operation keyword."""
    if piece.isascii() and piece.isalpha() and piece.lower() in OPERATIONS:
        return False
    return bool(piece) and piece in statement


def _statement(attrs: Any) -> str | None:
    """The span's statement (its names prove quoted names in error texts), if any."""
    value = attrs.get("db.query.text") or attrs.get("db.statement") if attrs else None
    return value if isinstance(value, str) else None


def _scrub_event(event: Event, statement: str | None) -> Event:
    attrs = dict(event.attributes or {})
    changed = False
    for key, scrub in (("exception.message", scrub_error_text), ("exception.stacktrace", scrub_traceback)):
        value = attrs.get(key)
        if isinstance(value, str):
            clean = scrub(value, statement)
            if clean != value:
                attrs[key] = clean
                changed = True
    if not changed:
        return event
    return Event(event.name, attrs, timestamp=event.timestamp)
