"""The request-thread half: measure each DB span once, and keep each request's queries.

Per DB span: at its start a :class:`~.record.Query` (and, under
``DBPERF_RESOURCE_SAMPLES=query``, a CPU-clock and RSS reading); at its end the duration,
the slow flag, one cached frame walk, an append to its request, and a hand-off to the
consumers: the exporters (``publish``, taken by :mod:`.enrich`) and the derivation thread
(``submit``, see :mod:`.derive`). Nothing is analysed here.

State lives in dicts keyed by span id, never on the SDK's span objects: adding an attribute
to one changes its instance layout and makes every later attribute access on it slower.
The SDK span fields read here are listed, with the versions checked, in ``_sdk_compat``.
"""

from __future__ import annotations

import sys
import weakref
from _thread import get_ident
from itertools import islice
from types import FrameType
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind, StatusCode, get_current_span

from .. import _error_kind, _forksafe
from .. import attributes as A
from .._error_kind import app_error
from .._guard import internal_error
from .._nosql import (
    KIND_CURSOR_FETCH,
    KIND_NOSQL,
    KIND_NOSQL_FRAMEWORK,
    KIND_QUERY,
    KIND_SETUP,
    NOSQL_SYSTEMS,
    add_call,
)
from .._resources import rss_bytes, thread_time_ns
from .._sdk_compat import default_span_status, span_id_of
from ..settings import Settings
from .location import SETUP, AppCode, lazy_loaded_relationship, location_of
from .record import MAX_HTTP_CALLS, MAX_QUERIES_PER_REQUEST, Query, Request, Thresholds
from .watchdog import Watchdog

_CLIENT = SpanKind.CLIENT
_ERROR = StatusCode.ERROR
_ERROR_TYPE = "error.type"
_DB_SYSTEM, _DB_SYSTEM_NAME = A.DB_SYSTEM, A.DB_SYSTEM_NAME
_DB_STATEMENT, _DB_QUERY_TEXT = A.DB_STATEMENT, A.DB_QUERY_TEXT
_URL_FULL, _HTTP_URL, _URL_TEMPLATE = "url.full", "http.url", "url.template"
_HTTP_METHOD, _HTTP_METHOD_OLD = "http.request.method", "http.method"
_ORM_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
_SPAN_END = Span.end.__code__
_UNSET_STATUS = default_span_status()
_QUALNAME = "co_qualname" if sys.version_info >= (3, 11) else "co_name"
_getframe = sys._getframe  # noqa: SLF001
_FRAME = FrameType
_new = object.__new__
MAX_PENDING = 100_000  # open spans / spans awaiting export that are tracked at once
MAX_CURSORS = 256  # cursors whose first fetch was seen, kept to tell their later fetches (then forgotten)
_SHARED_LOCK = _forksafe.lock("processor.shared")  # export threads only (several exporters share a payload)
_OVERFLOW_LOCK = _forksafe.lock("processor.overflow")  # a request past the cap of records

_processors: weakref.WeakSet[DbPerfSpanProcessor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child (its locks renewed by :mod:`._forksafe`): the parent's open and finished spans
    forgotten (they are the parent's to export). A span the child ends that it has no record of is
    exported with its statement sanitized on the spot."""
    for processor in list(_processors):
        processor.forget_after_fork()


_forksafe.register(_after_fork_in_child)


def _trim(table: dict[int, Any]) -> None:
    """Bound a pending table: drop its oldest tenth (spans that never ended or were never exported)."""
    for key in list(islice(table, len(table) // 10 + 1)):
        table.pop(key, None)


class DbPerfSpanProcessor(SpanProcessor):
    """Request-thread half: measures DB spans and keeps per-request state.

    Register it on the ``TracerProvider`` *before* the export processors, and wrap
    their exporters with :meth:`wrap_exporter`.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.thresholds = Thresholds.from_settings(settings)
        self._slow_ns = self.thresholds.slow_ns
        self._stack_ns = self.thresholds.stack_ns
        self._app = AppCode(settings.app_paths) if settings.code_location else None
        self.resources = settings.resource_samples != "off"  # CPU time and RSS per request
        self._per_query = settings.resource_samples == "query"  # and per DB span
        # span id -> the Query of an open client span, or the Request of a request's span; the same dict
        # for the processor's life (emptied, never replaced), so hooks on the request thread may hold it:
        # ``open_spans`` (one dict lookup for them, see _duplicates)
        self._open: dict[int, Any] = {}
        self.open_spans = self._open
        # thread id -> ORM-level client spans open on it outside any request
        self._loose_orm: dict[int, int] = {}
        # span id -> Query or Request (or [payload, consumers left]), for the exporters
        self._done: dict[int, Any] = {}
        self._consumers = 0
        # the derivation thread's submit(span, payload) once set up; nested driver spans excluded
        self._submit: Any = None
        # the depth (from _end_query) of the frame that called Span.end, and the code objects seen
        # there (id -> code: identity, not hashing, which walks a code object's constants)
        self._end_depth = 4
        self._end_callers: dict[int, Any] = {}
        self._end_code: Any = None  # the last of them (one identity test on the common path)
        # error texts the application wrote are told apart at a failed span's end (DBPERF_APP_ERROR_TEXT=false)
        self._app_errors = not settings.app_error_text
        # count_error(kind) for every classified failed DB span (the dbperf.db.errors counter), see
        # attach_error_counter
        self._count_error: Any = None
        self._orm_scope: Any = None  # the SQLAlchemy instrumentation's InstrumentationScope, once seen
        # id -> an asyncpg cursor whose first fetch span ended (held, so that its id is not reused while
        # it is here): its later fetches are KIND_CURSOR_FETCH
        self._cursors: dict[int, Any] = {}
        # the open requests, for the stack samples of CPU-bound ones and the event-loop stalls (see watchdog)
        self.watchdog = Watchdog(self.thresholds, self._app, self.resources)
        self._watched = self.watchdog.requests
        self._watch = self.watchdog.started if self.watchdog.active else None
        _processors.add(self)

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's open and finished spans are the parent's to export."""
        self._open.clear()
        self._done.clear()

    def attach_deriver(self, submit: Any) -> None:
        """Hand every finished DB span and request root to ``submit(span, payload)`` (metrics, sinks)."""
        self._submit = submit

    def attach_error_counter(self, count_error: Any) -> None:
        """Call ``count_error(kind)`` for every failed DB span with a classified error (a timeout, lock
        wait, deadlock...; see ``_error_kind.classify``) on the request thread; None: no counter."""
        self._count_error = count_error

    # Direct lookups for the hooks that run on the request thread while a span is open (the
    # duplicates digest, the EXPLAIN plan, the pool and transaction hooks): they are handed this
    # processor when installed, so they find their record with one dict lookup.
    def open_query(self, span: Any) -> Query | None:
        """The :class:`Query` of ``span``, a DB span that is still open, or None."""
        if span is None:
            return None
        entry = self._open.get(span._context[1])  # noqa: SLF001 - request thread, see _sdk_compat
        return entry if entry.__class__ is Query else None  # type: ignore[no-any-return]

    def current_request(self) -> Request | None:
        """The request (local root) the current span belongs to, or None outside any request: hooks
        add their per-request figures with :meth:`Request.add`."""
        try:
            entry = self._open.get(span_id_of(get_current_span()))  # type: ignore[arg-type]
            if entry is not None:
                return entry if entry.__class__ is Request else entry.request  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001
            internal_error("current_request", exc)
        return None

    @property
    def consumers(self) -> int:
        """How many exporters :meth:`wrap_exporter` wrapped (each takes every finished span's payload)."""
        return self._consumers

    def wrap_exporter(self, exporter: SpanExporter, *, safety_only: bool = False) -> Any:
        """The exporter that adds this processor's attributes before ``exporter`` sends spans
        (``safety_only``: adds nothing, only sanitizes and scrubs; see ``EnrichingSpanExporter``)."""
        from .enrich import EnrichingSpanExporter

        self._consumers += 1
        return EnrichingSpanExporter(exporter, self, safety_only=safety_only)

    # The hooks read the SDK span's fields directly (its properties cost a call each),
    # and SpanContext by index: it is a tuple (trace_id, span_id, is_remote, ...).
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            span_id = span._context[1]  # type: ignore[index]  # noqa: SLF001
            open_ = self._open
            if len(open_) >= MAX_PENDING:
                _trim(open_)
            parent = span._parent  # noqa: SLF001
            request: Request | None = None
            if parent is None or parent[2]:  # a local root
                if span._kind is not _CLIENT:  # noqa: SLF001 - a DB span outside any request is a query
                    if self.resources:
                        request = open_[span_id] = Request(span_id, thread_time_ns(), rss_bytes())
                    else:
                        request = open_[span_id] = Request(span_id, 0, 0)
                    watch = self._watch
                    if watch is not None:
                        watch(span_id, request)
                    return
                if parent is not None:
                    # a DB span right under a remote parent: the request that parent stands for when it
                    # is open here (the pytest guard's test, see _testrun), else none
                    entry = open_.get(parent[1])
                    if entry.__class__ is Request:
                        request = entry
            else:
                entry = open_.get(parent[1])
                if entry is not None:
                    request = entry if entry.__class__ is Request else entry.request
                if span._kind is not _CLIENT:  # noqa: SLF001
                    if request is not None:
                        open_[span_id] = request
                    return
            scope = span._instrumentation_scope  # noqa: SLF001
            # the SQLAlchemy instrumentation's scope, known by identity once seen (its name is a property)
            orm = scope is self._orm_scope or (scope is not None and self._is_orm_scope(scope))
            if orm:
                if request is not None:
                    request.open_orm += 1
                else:  # outside any request: counted open on its thread, so its driver span is nested there
                    loose = self._loose_orm
                    thread = get_ident()
                    loose[thread] = loose.get(thread, 0) + 1
            query = _new(Query)  # new_query inlined: no Python call on the hot path
            query.request = request
            query.orm = orm
            query.params = query.plan = query.facts = None
            query.repeat = query.kind = 0  # kind: KIND_QUERY until its end says otherwise
            query.duplicate = False
            if self._per_query:
                query.cpu_ns, query.rss_delta = thread_time_ns(), rss_bytes()
            open_[span_id] = query
        except Exception as exc:  # noqa: BLE001
            internal_error("on_start", exc)

    def open_request(self, span_id: int) -> None:
        """A request with no span of its own (the pytest guard's test when no report asks for its
        span): DB spans whose parent is a remote ``span_id`` join it, as they join a root span's
        (see :meth:`on_start`); :meth:`close_request` ends it. Nothing of it is exported."""
        open_ = self._open
        if len(open_) >= MAX_PENDING:
            _trim(open_)
        if self.resources:
            open_[span_id] = Request(span_id, thread_time_ns(), rss_bytes())
        else:
            open_[span_id] = Request(span_id, 0, 0)

    def close_request(self, span_id: int, span: Any) -> None:
        """End the request :meth:`open_request` opened: derived like a root span's (``span`` stands
        for the span the sinks are handed: its ``name`` and ``attributes``)."""
        entry = self._open.pop(span_id, None)
        if entry.__class__ is not Request or entry.root_id != span_id:
            return
        if self.resources:
            entry.cpu_ns = thread_time_ns() - entry.cpu0
            entry.rss = rss_bytes()
        entry.ended = True
        submit = self._submit
        if submit is not None:
            submit(span, entry)

    def _is_orm_scope(self, scope: Any) -> bool:
        if scope.name == _ORM_SCOPE:
            self._orm_scope = scope
            return True
        return False

    # The SDK calls on_end for every span of every processor: a C function that does nothing with it
    # costs less than the base class's Python method (its result is ignored).
    on_end = id  # type: ignore[assignment]

    def _on_ending(self, span: Span) -> None:
        try:
            span_id = span._context[1]  # type: ignore[index]  # noqa: SLF001
            entry = self._open.pop(span_id, None)
            if entry.__class__ is Query:  # the common case first
                self._end_query(span, span_id, entry)
                return
            if entry is None:
                if span._status.status_code is _ERROR and self._app_errors:  # noqa: SLF001
                    self._failed_span(span_id, None)
                return
            if entry.__class__ is Request:
                if entry.root_id == span_id:
                    if self.resources:
                        entry.cpu_ns = thread_time_ns() - entry.cpu0
                        entry.rss = rss_bytes()
                    entry.ended = True
                    self._watched.pop(span_id, None)
                    entry.duration_ns = span._end_time - span._start_time  # type: ignore[operator]  # noqa: SLF001
                    if span._status.status_code is _ERROR and self._app_errors:  # noqa: SLF001
                        # its own exception's verdict names its classes; else the request's stands
                        entry.app_error = app_error(sys.exc_info()[1]) or entry.app_error
                    self._publish(span_id, entry)
                    submit = self._submit
                    if submit is not None:
                        submit(span, entry)
                elif span._status.status_code is _ERROR and self._app_errors:  # noqa: SLF001
                    self._failed_span(span_id, entry)
        except Exception as exc:  # noqa: BLE001
            internal_error("_on_ending", exc)

    def _failed_span(self, span_id: int, request: Request | None) -> None:
        """A failed span that is neither a DB span nor a request's root (an app's own span): when its
        exception (or one it was raised from) carries an app-written text, or its request saw one,
        its exporters get that AppError and keep only the code."""
        found = app_error(sys.exc_info()[1])
        if request is not None:
            if found is None:
                found = request.app_error
            elif request.app_error is None:
                request.app_error = found
        if found is not None:
            self._publish(span_id, found)

    def _end_query(self, span: Span, span_id: int, query: Query) -> None:
        if self._per_query:
            query.cpu_ns, query.rss_delta = thread_time_ns() - query.cpu_ns, rss_bytes() - query.rss_delta  # type: ignore[operator]
        else:
            query.cpu_ns, query.rss_delta = -1, None
        request = query.request
        orm = query.orm
        if orm:
            if request is not None:
                request.open_orm -= 1
            else:
                _loose_ended(self._loose_orm)
        attrs = span._attributes._dict  # type: ignore[union-attr]  # noqa: SLF001 - read-only; frozen by now
        system = attrs.get(_DB_SYSTEM_NAME)
        if not system:
            if _DB_SYSTEM_NAME not in attrs and _DB_SYSTEM not in attrs:
                # an HTTP or other client span: only an outgoing HTTP call of a request is kept
                if request is not None:
                    url = attrs.get(_URL_FULL) or attrs.get(_HTTP_URL)
                    if url is not None:
                        self._http_call(request, attrs, url, span._end_time - span._start_time)  # type: ignore[operator]  # noqa: SLF001
                return
            system = attrs.get(_DB_SYSTEM)
        query.system = system
        start = query.start_ns = span._start_time  # type: ignore[assignment]  # noqa: SLF001
        duration = query.duration_ns = span._end_time - start  # type: ignore[operator]  # noqa: SLF001
        slow = query.slow = duration >= self._slow_ns
        error_kind = None
        statement = query.statement = attrs.get(_DB_QUERY_TEXT) or attrs.get(_DB_STATEMENT)
        status = span._status  # noqa: SLF001
        # the SDK's shared default status (none set) is known by identity: no property call
        if status is not _UNSET_STATUS and status.status_code is _ERROR:
            error_kind = _set_error_type(attrs)
            if self._app_errors:
                self._app_error(query, statement)
        kind = KIND_NOSQL if system in NOSQL_SYSTEMS else KIND_QUERY if statement is not None else KIND_SETUP
        location = relationship = None
        stack = ""
        app = self._app
        if app is not None:
            # the walk starts at the frame that called Span.end: at the depth found last time when
            # that frame's code is a known caller of Span.end, else found again (see _end_caller)
            frame: Any = None
            try:
                frame = _getframe(self._end_depth)
            except ValueError:
                pass
            if frame is None:
                frame = self._end_caller()
            else:
                code = frame.f_code
                if code is not self._end_code and self._end_callers.get(id(code)) is not code:
                    frame = self._end_caller()
            found, lazy, hint, cursor = app.walk(frame)
            awaiter = None
            if lazy is not None:
                relationship = lazy_loaded_relationship(lazy)
            if hint is SETUP:  # Django's connection setup or a pool's housekeeping issued it
                kind = KIND_SETUP
                hint = None
            elif hint.__class__ is _FRAME:  # asyncio's loop below the task's frames, none of them the app's
                found, awaiter = app.awaited_from(hint)  # the app frame that awaits the task, if any
                hint = None
            if cursor is not None and kind == KIND_QUERY:
                kind = self._cursor_fetch(cursor, request, duration)
            if found is not None:
                if hint is None:  # location_of inlined
                    code = found.f_code
                    location = (code.co_filename, found.f_lineno, getattr(code, _QUALNAME))
                else:
                    location = location_of(found, hint)
                if slow and duration >= self._stack_ns:
                    settings = self.settings
                    stack = app.stacktrace(frame, settings.stacktrace_max_frames, settings.stacktrace_source, awaiter)
            elif kind == KIND_NOSQL:
                kind = KIND_NOSQL_FRAMEWORK  # no application frame: the framework's own traffic
        query.location = location
        query.stack = stack
        query.relationship = relationship
        query.kind = kind
        if orm:
            nested = False
        elif request is not None:
            nested = request.open_orm > 0
        else:
            nested = self._loose_orm.get(get_ident(), 0) > 0
        query.nested = nested
        if error_kind is not None and not nested:
            _error_kind.counted(error_kind, request, self._count_error)
        if kind == KIND_QUERY:
            if request is not None and not nested:
                records = request.records
                if len(records) < MAX_QUERIES_PER_REQUEST:
                    records.append(query)
                else:
                    _count_overflow(request, query)
        elif kind == KIND_NOSQL and request is not None:
            add_call(request, query)
        if self._consumers == 1:  # _publish inlined for one exporter
            done = self._done
            if len(done) >= MAX_PENDING:
                _trim(done)
            done[span_id] = query
        else:
            self._publish(span_id, query)
        submit = self._submit
        # connection spans, setup statements and a cursor's later fetches are no operation of the application
        if submit is not None and kind != KIND_SETUP and kind != KIND_CURSOR_FETCH and not nested:
            submit(span, query)

    def _cursor_fetch(self, cursor: Any, request: Request | None, duration: int) -> int:
        """The kind of a fetch span of asyncpg ``cursor``: KIND_QUERY for its first (remembered), else
        KIND_CURSOR_FETCH, its time added to the request's DB time."""
        cursors = self._cursors
        key = id(cursor)
        if cursors.get(key) is cursor:
            if request is not None:
                request.fetch_ns += duration
            return KIND_CURSOR_FETCH
        if len(cursors) >= MAX_CURSORS:
            cursors.clear()  # a cursor still being read then counts its next fetch once more
        cursors[key] = cursor
        return KIND_QUERY

    def _http_call(self, request: Request, attrs: dict[str, Any], url: Any, duration: int) -> None:
        """An outgoing HTTP call of ``request``: its URL, method, duration and the application line that
        made it, one await-chain up when no application frame is on its task's stack (the route template
        and the N+1 verdict are made off the request thread, see findings)."""
        calls = request.http
        if calls is None:
            calls = request.http = []
        elif len(calls) >= MAX_HTTP_CALLS:
            return
        location = None
        app = self._app
        if app is not None:
            frame: Any = _getframe(2)
            while frame is not None and frame.f_code is not _SPAN_END:
                frame = frame.f_back
            found, _, hint, _ = app.walk(frame.f_back if frame is not None else _getframe(2))
            if found is None and hint.__class__ is _FRAME:
                # asyncio's loop below the call's task, none of its frames the app's (its coroutine went
                # straight to gather, a TaskGroup, create_task): the app frame that awaits the task, if any
                found = app.awaited_from(hint)[0]
            if found is not None:
                code = found.f_code
                location = (code.co_filename, found.f_lineno, getattr(code, _QUALNAME))
        method = attrs.get(_HTTP_METHOD) or attrs.get(_HTTP_METHOD_OLD)
        calls.append((attrs.get(_URL_TEMPLATE), url, method, duration, location))

    def _app_error(self, query: Query, statement: Any) -> None:
        """A failed DB span: whether its error text is the application's (from the exception being
        handled, which the SQLAlchemy and DB-API instrumentations end their spans in)."""
        found = app_error(sys.exc_info()[1], statement, query.system)
        if found is None:
            return
        query.app_error = found
        request = query.request
        if request is not None and request.app_error is None:
            request.app_error = found

    def _end_caller(self) -> Any:
        """The frame that called the SDK's ``Span.end`` (found by its code object, so a change in the
        SDK's call depth cannot skip the app's frames); its depth and code are remembered for
        :meth:`_end_query`'s fast path. Without ``Span.end`` on this thread's stack (the hooks run
        on a pool thread under ``ConcurrentMultiSpanProcessor``): our caller, nothing remembered."""
        frame: Any = sys._getframe(2)  # noqa: SLF001 - _end_query's caller
        depth = 1  # of frame, counted from _end_query
        while frame is not None:
            if frame.f_code is _SPAN_END:
                caller = frame.f_back
                if caller is not None:
                    if len(self._end_callers) >= 64:
                        self._end_callers.clear()
                    self._end_callers[id(caller.f_code)] = self._end_code = caller.f_code
                    self._end_depth = depth + 1
                return caller
            frame = frame.f_back
            depth += 1
        return sys._getframe(2)  # noqa: SLF001

    def _publish(self, span_id: int, payload: Any) -> None:
        consumers = self._consumers
        if consumers:
            done = self._done
            if len(done) >= MAX_PENDING:
                _trim(done)
            done[span_id] = payload if consumers == 1 else [payload, consumers]

    def take(self, span_id: int) -> Any:
        """Export side: the Query or Request of a finished span (the last consumer removes it)."""
        if self._consumers == 1:
            return self._done.pop(span_id, None)
        with _SHARED_LOCK:
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


def _set_error_type(attrs: dict[str, Any]) -> str | None:
    """semconv ``error.type`` on a failed DB span: the DB-API exception being handled right now;
    and ``dbperf.db.error.kind`` when it is a timeout, lock wait, deadlock or the like (returned).

    The SQLAlchemy instrumentation ends a failed query's span from its ``handle_error``
    listener, inside SQLAlchemy's ``except`` block, so the exception is still current.
    """
    exc = sys.exc_info()[1]
    if exc is None:
        return None
    if _ERROR_TYPE not in attrs:
        cls = type(exc)
        module = cls.__module__
        attrs[_ERROR_TYPE] = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
    kind = _error_kind.classify(exc)
    if kind is not None:
        attrs[A.DB_ERROR_KIND] = kind
    return kind


def _loose_ended(loose: dict[int, int]) -> None:
    """An ORM-level client span outside any request ended on this thread."""
    thread = get_ident()
    left = loose.get(thread, 0) - 1
    if left > 0:
        loose[thread] = left
    else:
        loose.pop(thread, None)


def _count_overflow(request: Request, query: Query) -> None:
    """Past the cap a request keeps running totals instead of every query."""
    with _OVERFLOW_LOCK:
        totals = request.overflow
        totals[0] += 1
        totals[1] += query.duration_ns
        totals[2] += query.slow
