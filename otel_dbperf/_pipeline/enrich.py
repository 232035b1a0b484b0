"""The export-thread half: the dbperf attributes, added to each span before its exporter sends it.

A DB span gets its sanitized statement, fingerprint, summary, slow flag, code location,
and its verdicts within the request (N+1 repeat, exact duplicate); a request's root span
gets the request's :class:`~.record.Rollup`. A DB span without its record (evicted, ended
after a fork, begun before otel-dbperf) is sanitized on the spot; one that cannot be made
safe is dropped, never exported raw. Every span's error texts are scrubbed (only the code
and class of one the application wrote, see :func:`.._error_kind.app_error`), its
tracebacks lose their source lines, and its URLs the values of secret-looking query
parameters (:mod:`.._urls`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode

from .. import _pause
from .. import attributes as A
from .._error_kind import AppError
from .._errors import opaque_error_text, scrub_error_text, scrub_traceback
from .._guard import internal_error
from .._nosql import KIND_CURSOR_FETCH, KIND_NOSQL, KIND_NOSQL_FRAMEWORK, KIND_QUERY, KIND_SETUP, nosql_rollup
from .._sdk_compat import (
    attr_dict,
    attributes_of,
    bounded,
    events_of,
    name_of,
    span_id_of,
    status_of,
    times_of,
    with_changes,
)
from .._sql import OPERATIONS, Analysis, analyze
from .._urls import UrlRedactor
from .findings import findings_attributes
from .record import Query, Request
from .suggest import relationship_fix

_DB_SYSTEM, _DB_SYSTEM_NAME = A.DB_SYSTEM, A.DB_SYSTEM_NAME
_DB_STATEMENT, _DB_QUERY_TEXT = A.DB_STATEMENT, A.DB_QUERY_TEXT
_OPERATION_KEYS = ("db.operation.name", "db.operation")


class EnrichingSpanExporter(SpanExporter):
    """Adds the dbperf attributes, then delegates to ``exporter``."""

    def __init__(self, exporter: SpanExporter, processor: Any, *, safety_only: bool = False) -> None:
        self._exporter = exporter
        self._processor = processor
        #: ``DBPERF_ENABLED=false``: nothing is added (no fingerprint, summary or slow flag), but statements
        #: are still sanitized, error texts scrubbed and URL parameters redacted (``processor`` measures nothing)
        self._safety_only = safety_only
        self._settings = processor.settings
        self._thresholds = processor.thresholds
        self._source = self._settings.stacktrace_source  # tracebacks keep their source lines
        params = self._settings.redact_url_params
        self._urls = UrlRedactor(params) if params else None
        #: DB spans exported without their record (evicted, ended after a fork, begun before
        #: otel-dbperf): statement sanitized on the spot
        self.unmeasured = 0
        #: DB spans dropped because even that failed (an internal error): never exported raw
        self.dropped = 0
        #: every ``pause_every`` spans of a batch the enrichment sleeps ``pause_s`` seconds (None: never),
        #: so that a request thread waiting for the GIL gets it (docs/design.md "Tail latency")
        self.pause_every = _pause.PAUSE_EVERY
        self.pause_s: float | None = _pause.PAUSE_S

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        out = []
        pause = self.pause_s
        every = 0 if pause is None else self.pause_every
        pacer = _pause.pacer(pause) if every else None
        countdown = every + 1  # no pause before the first slice
        for span in spans:
            if pacer is not None:
                countdown -= 1
                if not countdown:  # let a request thread waiting for the GIL run
                    countdown = every
                    pacer.pause()
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
            payload = self._processor.take(span_id_of(span))
            if payload.__class__ is Query:
                return self._enrich_query(span, payload)
            if payload.__class__ is Request:
                return self._enrich_root(span, payload)
            attrs = attr_dict(attributes_of(span))
            if _DB_SYSTEM_NAME in attrs or _DB_SYSTEM in attrs:
                return self._enrich_unmeasured(span, attrs)
            urls = self._urls
            changed, name = urls.span(attrs, name_of(span)) if urls is not None else (None, None)
            failed = status_of(span).status_code is StatusCode.ERROR
            if failed or events_of(span) or changed is not None or name is not None:
                app = payload if payload.__class__ is AppError else None
                return self._scrub(span, changed, None, name, app)
        except Exception as exc:  # noqa: BLE001
            internal_error("export", exc)
            return self._fail_closed(span)
        return span

    def _enrich_unmeasured(self, span: ReadableSpan, original: Mapping[str, Any]) -> ReadableSpan:
        """A DB span without its record: never its raw statement. Sanitized here, with the
        fingerprint, summary and slow flag that the span alone gives (none of them when safety only)."""
        safety_only = self._safety_only
        if not safety_only:
            self.unmeasured += 1
        attrs = dict(original)
        statement = attrs.get(_DB_QUERY_TEXT) or attrs.get(_DB_STATEMENT)
        system = attrs.get(_DB_SYSTEM_NAME) or attrs.get(_DB_SYSTEM)
        if safety_only and not self._settings.sanitize_statements:
            return self._scrub(span, None, None)
        analysis = (
            analyze(statement, self._thresholds.statement_max_length, system) if isinstance(statement, str) else None
        )
        name = self._statement_attributes(span, attrs, statement, analysis)
        if safety_only:
            return self._scrub(span, attrs, None, name)
        start, end = times_of(span)
        if isinstance(start, int) and isinstance(end, int) and statement is not None:  # a connection: no query
            attrs[A.QUERY_SLOW] = end - start >= self._thresholds.slow_ns
        return self._scrub(span, attrs, None, name)

    def _fail_closed(self, span: ReadableSpan) -> ReadableSpan | None:
        """After an internal error: no statement of a DB span, no error text or event that was not
        scrubbed; the span goes out without them, or not at all."""
        try:
            attrs = attr_dict(attributes_of(span))
            status = status_of(span)
            is_db = _DB_SYSTEM_NAME in attrs or _DB_SYSTEM in attrs
            statement = is_db and (_DB_QUERY_TEXT in attrs or _DB_STATEMENT in attrs)
            if not (statement or events_of(span) or status.description):
                return span
            kept = {k: v for k, v in attrs.items() if not (statement and k in (_DB_QUERY_TEXT, _DB_STATEMENT))}
            name = name_of(span)
            if is_db:  # contrib names DB spans after the statement's first piece, which may hold a literal
                if not _keyword_led(name):
                    system = attrs.get(_DB_SYSTEM_NAME) or attrs.get(_DB_SYSTEM)
                    name = str(system) if isinstance(system, str) and system.isidentifier() else "DB"
                for key in _OPERATION_KEYS:
                    if key in kept and not _keyword_led(kept[key]):
                        del kept[key]
            # events: exception events quote statements and values
            attributes = bounded(kept, attributes_of(span))
            return with_changes(span, False, name, attributes, (), Status(status.status_code))
        except Exception:  # noqa: BLE001 - nothing safe can be made of it: dropped
            self.dropped += 1
            return None

    def _statement_attributes(
        self, span: ReadableSpan, attrs: dict[str, Any], statement: Any, analysis: Analysis | None
    ) -> str | None:
        """The statement's sanitized text, fingerprint and summary into ``attrs``; the span's new
        name (None: keep it). A statement that is not text is not exported."""
        settings = self._settings
        if analysis is None:
            if settings.sanitize_statements:
                for key in (_DB_QUERY_TEXT, _DB_STATEMENT):
                    attrs.pop(key, None)
            return None
        name = None
        if settings.sanitize_statements:
            for key in (_DB_QUERY_TEXT, _DB_STATEMENT):
                if key in attrs:
                    attrs[key] = analysis.sanitized
            name = _statement_free_names(span, attrs, analysis, statement)
        if self._safety_only:
            return name
        attrs[A.QUERY_FINGERPRINT] = analysis.fingerprint
        if analysis.summary and A.DB_QUERY_SUMMARY not in attrs:
            attrs[A.DB_QUERY_SUMMARY] = analysis.summary
        return name

    def _enrich_query(self, span: ReadableSpan, query: Query) -> ReadableSpan:
        thresholds = self._thresholds
        attrs = dict(attr_dict(attributes_of(span)))
        request = query.request
        kind = query.kind
        if request is not None and not query.repeat and not query.nested and kind == KIND_QUERY:
            request.advance(thresholds.statement_max_length)  # this query's place among the request's
        analysis = query.analysis(thresholds.statement_max_length)
        name = self._statement_attributes(span, attrs, query.statement, analysis)
        slow = query.slow
        if kind == KIND_SETUP:  # a connection span or setup statement: not a query, never slow
            slow = False
            if query.statement is not None:
                attrs[A.QUERY_SETUP] = True
        elif kind == KIND_NOSQL_FRAMEWORK:  # the framework's own call (a worker's blocking BRPOP): never slow
            slow = False
            attrs[A.QUERY_NOSQL] = attrs[A.QUERY_FRAMEWORK] = True
        else:
            attrs[A.QUERY_SLOW] = slow
            if kind == KIND_NOSQL:
                attrs[A.QUERY_NOSQL] = True
            elif kind == KIND_CURSOR_FETCH:  # a later fetch of a cursor: its first fetch is the query
                attrs[A.QUERY_CURSOR_FETCH] = True
        if query.cpu_ns >= 0:
            attrs[A.CPU_TIME_MS] = query.cpu_ns / 1e6
        location = query.location
        if location is not None:
            attrs[A.CODE_FILE_PATH], attrs[A.CODE_LINE_NUMBER], attrs[A.CODE_FUNCTION_NAME] = location[:3]
            if len(location) > 3:
                attrs[A.CODE_PYTHON_LOCATION] = location[3]
        if query.stack:
            attrs[A.CODE_STACKTRACE] = query.stack
        if query.nested:
            attrs[A.QUERY_NESTED] = True
        if query.repeat >= thresholds.n_plus_one:
            attrs[A.N_PLUS_ONE] = True
        if query.duplicate:
            attrs[A.QUERY_DUPLICATE] = True
        extra_events: list[Event] = []
        end_time = times_of(span)[1]
        if query.plan is not None:
            plan_attrs, plan_time = query.plan
            extra_events.append(Event(A.EVENT_EXPLAIN, plan_attrs, timestamp=plan_time))
        if slow:
            event_attrs: dict[str, Any] = {
                A.EVENT_DURATION_MS: query.duration_ns / 1e6,
                A.EVENT_THRESHOLD_MS: thresholds.slow_ms,
            }
            if analysis is not None:
                event_attrs[A.QUERY_FINGERPRINT] = analysis.fingerprint
            if location is not None:
                event_attrs[A.CODE_FILE_PATH], event_attrs[A.CODE_LINE_NUMBER] = location[0], location[1]
            extra_events.append(Event(A.EVENT_SLOW_QUERY, event_attrs, timestamp=end_time))
        return self._scrub(span, attrs, extra_events, name, getattr(query, "app_error", None))

    def _enrich_root(self, span: ReadableSpan, request: Request) -> ReadableSpan:
        rollup = request.rollup(self._thresholds)
        attrs = dict(attr_dict(attributes_of(span)))
        attrs[A.DB_QUERY_COUNT] = rollup.count
        attrs[A.DB_SLOW_QUERY_COUNT] = rollup.slow
        attrs[A.DB_DURATION_MS] = rollup.db_ns / 1e6
        attrs[A.DB_DUPLICATE_COUNT] = rollup.dup_count
        attrs[A.DB_DUPLICATE_DURATION_MS] = rollup.dup_ns / 1e6
        attrs[A.N_PLUS_ONE_DETECTED] = rollup.detected
        if rollup.detected:
            attrs[A.N_PLUS_ONE_FINGERPRINT] = rollup.fingerprint
            attrs[A.N_PLUS_ONE_REPEAT_COUNT] = rollup.repeats
            if rollup.summary:
                attrs[A.N_PLUS_ONE_QUERY_SUMMARY] = rollup.summary
            if rollup.location is not None:
                attrs[A.N_PLUS_ONE_CODE_LOCATION] = f"{rollup.location[0]}:{rollup.location[1]}"
                if len(rollup.location) > 3:
                    attrs[A.N_PLUS_ONE_PYTHON_LOCATION] = rollup.location[3]
            if rollup.relationship is not None:
                relationship, suggestion = relationship_fix(rollup.relationship)
                if relationship:
                    attrs[A.N_PLUS_ONE_RELATIONSHIP] = relationship
                    attrs[A.N_PLUS_ONE_SUGGESTION] = suggestion
        if self._processor.resources:
            attrs[A.CPU_TIME_MS] = request.cpu_ns / 1e6
            attrs[A.MEMORY_RSS_BYTES] = request.rss
            attrs[A.MEMORY_RSS_DELTA_BYTES] = request.rss - request.rss0
        events = list(request.events) if request.events else []
        findings_attributes(request, self._thresholds, self._processor.resources, attrs, events)
        if request.extras:
            attrs.update(request.extras)
        if request.calls:
            attrs.update(
                nosql_rollup(request.calls, self._thresholds.n_plus_one, self._thresholds.statement_max_length)
            )
        name = None
        urls = self._urls
        if urls is not None:
            changed, name = urls.span(attrs, name_of(span))
            if changed is not None:
                attrs = changed
        return self._scrub(span, attrs, events or None, name, request.app_error)

    def _scrub(
        self,
        span: ReadableSpan,
        attrs: dict[str, Any] | None,
        extra_events: list[Event] | None,
        name: str | None = None,
        app: AppError | None = None,
    ) -> ReadableSpan:
        """``span`` with ``attrs``, ``extra_events``, and error texts cleaned of parameter values
        (``app``: the error text is the application's, only its code and class stay)."""
        status = status_of(span)
        statement = _statement(attrs if attrs is not None else attributes_of(span))
        if status.status_code is StatusCode.ERROR and status.description:
            if app is not None:
                clean = opaque_error_text(status.description, app, statement)
            else:
                clean = scrub_error_text(status.description, statement)
            if clean != status.description:
                status = Status(StatusCode.ERROR, clean)
        original: Sequence[Event] = events_of(span)
        events = original
        if events and any(e.name == "exception" for e in events):
            events = [_scrub_event(e, statement, self._source, app) if e.name == "exception" else e for e in events]
        if extra_events:
            events = [*events, *extra_events]
        if attrs is None:
            if status is status_of(span) and events is original and name is None:
                return span
            attrs = dict(attr_dict(attributes_of(span)))
        in_place = self._processor.consumers == 1
        return with_changes(span, in_place, name, bounded(attrs, attributes_of(span)), events, status)


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
    name = name_of(span)
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
    value = attrs.get(_DB_QUERY_TEXT) or attrs.get(_DB_STATEMENT) if attrs else None
    return value if isinstance(value, str) else None


def _scrub_event(event: Event, statement: str | None, source: bool, app: AppError | None) -> Event:
    attrs = dict(event.attributes or {})
    changed = False
    for key in ("exception.message", "exception.stacktrace"):
        value = attrs.get(key)
        if isinstance(value, str):
            if key == "exception.stacktrace":
                clean = scrub_traceback(value, statement, source, app)
            elif app is not None:
                clean = opaque_error_text(value, app, statement)
            else:
                clean = scrub_error_text(value, statement)
            if clean != value:
                attrs[key] = clean
                changed = True
    if not changed:
        return event
    return Event(event.name, attrs, timestamp=event.timestamp)
