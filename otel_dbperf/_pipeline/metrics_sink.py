"""The RED metrics of design.md section 5, derived from the spans the processor measured.

Runs on the derivation thread (see :mod:`.derive`). Metrics come from the spans before any
sampling, and do not depend on a trace exporter being configured. Each measurement is
recorded with the span's context, so histogram points carry exemplars (trace and span ids)
under the SDK's default ``trace_based`` filter.
"""

from __future__ import annotations

import re
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.trace import NonRecordingSpan, SpanKind, StatusCode, set_span_in_context

from .. import attributes as A
from .. import metric_names as M
from .._nosql import KIND_QUERY
from .._sdk_compat import records_instrument
from .._sql import OPERATIONS
from .findings import KINDS, findings_of
from .record import Query, Request, Rollup
from .route import route_labels
from .sink import Sink

MAX_TABLES = 500  # distinct db.collection.name values; the rest collapse to _OTHER
OTHER = "_OTHER"
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}(?:\.[A-Za-z_][A-Za-z0-9_$]{0,62}){0,2}")
_COMMAND = re.compile(r"[A-Z][A-Z0-9_.]{0,31}(?: [A-Z][A-Z0-9_]{0,31})?")  # a non-SQL command label


class MetricsSink(Sink):
    #: calls to key-value and document stores reach this sink too: their durations, under their own
    #: db.system.name, in db.client.operation.duration (and nowhere else)
    takes_calls = True

    def __init__(self, meter: Meter, meter_provider: Any, scope: str) -> None:
        self._provider = meter_provider
        self._scope = scope
        self._meter = meter
        self._tables: set[str] = set()
        self._db_duration = meter.create_histogram(
            M.DB_CLIENT_OPERATION_DURATION.name, unit="s", description="Duration of database client operations."
        )
        self._slow = meter.create_counter(
            M.DB_SLOW_QUERIES.name, unit="{query}", description="Queries at or over DBPERF_SLOW_QUERY_THRESHOLD_MS."
        )
        self._n_plus_one = meter.create_counter(
            M.DB_N_PLUS_ONE.name, unit="{occurrence}", description="Requests repeating one statement N+1 style."
        )
        self._request_db = meter.create_histogram(
            M.REQUEST_DB_DURATION.name, unit="s", description="Database time per request."
        )
        self._request_queries = meter.create_histogram(
            M.REQUEST_DB_QUERIES.name, unit="{query}", description="Database queries per request."
        )
        self._findings = meter.create_counter(
            M.REQUEST_FINDINGS.name,
            unit="{request}",
            description="Requests with a finding beyond N+1 queries, by dbperf.finding.",
        )
        self._loop_blocked = meter.create_histogram(
            M.EVENT_LOOP_BLOCKED.name,
            unit="s",
            description="asyncio event-loop stalls at or over DBPERF_EVENT_LOOP_BLOCKED_MS.",
        )
        self._resources = True  # whether requests carry their CPU time (see attach_settings)
        self._thresholds: Any = None
        self._http_duration: Any = None  # created only when no framework instrumentation records it
        self._http_checked = False

    def judge_findings(self, thresholds: Any, resources: bool) -> None:
        """Count each request's findings (``dbperf.request.findings``) with these thresholds."""
        self._thresholds = thresholds
        self._resources = resources

    def record_stall(self, seconds: float) -> None:
        """One event-loop stall (the watchdog thread)."""
        self._loop_blocked.record(seconds)

    def table(self, name: str) -> str:
        """``db.collection.name`` as a bounded label: a plain identifier, one of the first 500, else _OTHER."""
        if not _TABLE_NAME.fullmatch(name):
            return OTHER
        if name in self._tables:
            return name
        if len(self._tables) >= MAX_TABLES:
            return OTHER
        self._tables.add(name)
        return name

    def query(self, span: Any, query: Query) -> None:
        attrs = span.attributes or {}
        labels: dict[str, Any] = {}
        system = attrs.get(A.DB_SYSTEM_NAME) or attrs.get(A.DB_SYSTEM)
        if system:
            labels["db.system.name"] = system
        # our own parse first: the SQLAlchemy instrumentation's db.operation.name is the first word
        # followed by the database name ("SELECT /srv/app.db"), unfit for a metric label
        operation: Any = ""
        table = attrs.get("db.collection.name")
        analysis = query.facts
        if analysis is not None:
            operation = analysis.operation
            table = table or analysis.table
        if not operation:
            operation = attrs.get("db.operation.name") or ""
        sql = query.kind == KIND_QUERY
        if operation:
            # an operation keyword only: contrib's value is the statement's first piece, maybe a literal
            if sql:
                labels["db.operation.name"] = operation.upper() if str(operation).lower() in OPERATIONS else OTHER
            else:  # a command name (our analysis keeps only that): bounded by the store's command set
                labels["db.operation.name"] = operation if _COMMAND.fullmatch(str(operation)) else OTHER
        if table:
            labels["db.collection.name"] = self.table(str(table))
        error = _error_type(span)
        if error:
            labels["error.type"] = error
        context = _context_of(span)
        self._db_duration.record(query.duration_ns / 1e9, labels, context=context)
        if sql and query.slow:
            self._slow.add(1, labels, context=context)

    def request(self, span: Any, request: Request, rollup: Rollup, route: str) -> None:
        _, labels = route_labels(span.attributes or {})  # http.route, or a Celery task's celery.task_name
        context = _context_of(span)
        self._request_db.record(rollup.db_ns / 1e9, labels, context=context)
        self._request_queries.record(rollup.count, labels, context=context)
        for _fingerprint, table in rollup.repeated:
            n1 = dict(labels)
            if table:
                n1["db.collection.name"] = self.table(table)
            self._n_plus_one.add(1, n1, context=context)
        if self._thresholds is not None:
            # every kind on every route, 0 when not found: a series exists before its first finding, so
            # that rate() sees that first one (and a route's panel reads 0, not "no data")
            found = findings_of(request, self._thresholds, self._resources).kinds()
            for kind in KINDS:
                self._findings.add(int(kind in found), {**labels, "dbperf.finding": kind}, context=context)
        if span.kind is SpanKind.SERVER:
            self._record_http(span, span.attributes or {}, route, context)

    def _record_http(self, span: Any, attrs: Any, route: Any, context: Context) -> None:
        if not self._http_checked:
            self._http_checked = True
            name = M.HTTP_SERVER_REQUEST_DURATION.name
            if not records_instrument(self._provider, name, self._scope):
                self._http_duration = self._meter.create_histogram(
                    name, unit="s", description="Duration of HTTP server requests."
                )
        if self._http_duration is None:
            return
        labels: dict[str, Any] = {}
        method = attrs.get("http.request.method") or attrs.get("http.method")
        status = attrs.get("http.response.status_code") or attrs.get("http.status_code")
        if route:
            labels["http.route"] = route
        if method:
            labels["http.request.method"] = method
        if status:
            labels["http.response.status_code"] = status
        error = attrs.get("error.type")
        if not error and isinstance(status, int) and status >= 500:
            error = str(status)
        if error:
            labels["error.type"] = error
        self._http_duration.record((span.end_time - span.start_time) / 1e9, labels, context=context)


def _context_of(span: Any) -> Context:
    return set_span_in_context(NonRecordingSpan(span.get_span_context()))


def _error_type(span: Any) -> str:
    """``error.type`` of a failed DB span: the span's attribute, else the exception's type."""
    if span.status.status_code is not StatusCode.ERROR:
        return ""
    error = (span.attributes or {}).get("error.type")
    if error:
        return str(error)
    for event in span.events:
        if event.name == "exception":
            kind = (event.attributes or {}).get("exception.type")
            if kind:
                return str(kind)[:128]
    return OTHER
