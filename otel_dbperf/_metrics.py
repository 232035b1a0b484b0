"""RED metrics derived from the spans the processor measures (design.md section 5).

The request thread only appends ``(span, payload)`` to a bounded queue (one
``deque.append``); a background thread drains it, and so does every metric
collection (an observable callback), so an export or a scrape sees every span
that ended before it. Metrics come from the spans before any sampling, and do
not depend on a trace exporter being configured.

Each measurement is recorded with the span's context, so histogram points carry
exemplars (trace and span ids) under the SDK's default ``trace_based`` filter.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import NonRecordingSpan, SpanKind, StatusCode, set_span_in_context

from . import attributes as A
from . import metric_names as M
from ._guard import internal_error
from ._nosql import KIND_QUERY
from ._processor import _DUR, _KIND, _SLOW, _STMT, _SYS
from ._route import route_labels
from ._sql import OPERATIONS, analyze
from .metrics import METER_NAME
from .settings import Settings

_log = logging.getLogger("otel_dbperf")
_SCOPE = METER_NAME
_MAX_QUEUE = 100_000  # spans awaiting derivation; past it they are dropped and counted
_MAX_TABLES = 500  # distinct db.collection.name values; the rest collapse to _OTHER
_OTHER = "_OTHER"
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}(?:\.[A-Za-z_][A-Za-z0-9_$]{0,62}){0,2}")
_COMMAND = re.compile(r"[A-Z][A-Z0-9_.]{0,31}(?: [A-Z][A-Z0-9_]{0,31})?")  # a non-SQL command label
_DRAIN_INTERVAL_S = 0.5
EXIT_DRAIN_S = 2.0  # at exit the queue is drained for at most this long; the rest is dropped and counted


class SpanDeriver:
    """Turns finished DB spans and request roots into the section 5 metrics, and feeds the sinks."""

    def __init__(
        self,
        settings: Settings,
        meter_provider: MeterProvider | None,
        version: str = "",
        sinks: Sequence[Any] = (),
    ) -> None:
        """``meter_provider`` None: no metrics, only ``sinks`` (each with ``query(span, record, analysis)``
        and ``request(span, request, route)``: the profiler's history, the slow-query log)."""
        self._settings = settings
        self._provider = meter_provider
        self._sinks = tuple(sinks)
        self.queue: deque[tuple[Any, Any]] = deque()
        self.dropped = 0
        self._tables: set[str] = set()
        self._lock = threading.Lock()  # one drainer at a time keeps per-request order simple
        self._start_lock = threading.Lock()
        self._needs_thread = True  # started by the first submit (again in a forked child)
        if meter_provider is not None:
            self._create_instruments(meter_provider.get_meter(_SCOPE, version))

    def _create_instruments(self, meter: Meter) -> None:
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
        self._http_duration: Any = None  # created only when no framework instrumentation records it
        self._http_checked = False
        self._meter = meter
        meter.create_observable_counter(
            M.METRICS_DROPPED.name,
            callbacks=[self._collect],
            unit="{span}",
            description="Spans whose metrics were dropped because the derivation queue was full.",
        )

    # ---- request thread -------------------------------------------------------------------
    def submit(self, span: Any, payload: Any) -> None:
        """Queue a finished span (called by the processor; must stay cheap)."""
        if self._needs_thread:
            self._start()
        queue = self.queue
        if len(queue) < _MAX_QUEUE:
            queue.append((span, payload))
        else:
            self.dropped += 1

    # ---- background ----------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._needs_thread:
                threading.Thread(target=self._run, name="otel-dbperf-derive", daemon=True).start()
                self._needs_thread = False

    def after_fork_in_child(self) -> None:
        """A forked child: fresh locks, the parent's queued spans forgotten (they are the
        parent's), our thread started again on first use; the sinks forget the parent's too."""
        self.queue.clear()
        self.dropped = 0
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._needs_thread = True
        for sink in self._sinks:
            reset = getattr(sink, "after_fork_in_child", None)
            if reset is not None:
                reset()

    def _run(self) -> None:
        while True:
            time.sleep(_DRAIN_INTERVAL_S)
            self.drain()

    def _collect(self, options: CallbackOptions) -> Iterable[Observation]:
        self.drain()
        yield Observation(self.dropped)

    def drain_at_exit(self) -> None:
        """At interpreter exit: drain for at most :data:`EXIT_DRAIN_S`, then drop what is left
        (counted in ``dbperf.metrics.dropped`` and said once on the log) so exit is never held up."""
        self.drain(time.monotonic() + EXIT_DRAIN_S)
        left = len(self.queue)
        if left:
            self.queue.clear()
            self.dropped += left
            _log.warning(
                "otel-dbperf: exit: the metrics of %d spans were dropped (derivation is bounded to %.0f s at exit)",
                left,
                EXIT_DRAIN_S,
            )

    def drain(self, deadline: float | None = None) -> None:
        """Record the metrics of every queued span (until ``deadline``, a ``time.monotonic()``)."""
        if deadline is None:
            lock_ok = self._lock.acquire()
        else:
            lock_ok = self._lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
        if not lock_ok:
            return
        try:
            queue = self.queue
            while queue:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                try:
                    span, payload = queue.popleft()
                except IndexError:
                    return
                try:
                    if payload.__class__ is tuple:
                        self._record_query(span, payload)
                    else:
                        self._record_request(span, payload)
                except Exception as exc:  # noqa: BLE001
                    internal_error("metrics", exc)
        finally:
            self._lock.release()

    # ---- derivation ----------------------------------------------------------------------
    def _table(self, name: str) -> str:
        if not _TABLE_NAME.fullmatch(name):
            return _OTHER
        if name in self._tables:
            return name
        if len(self._tables) >= _MAX_TABLES:
            return _OTHER
        self._tables.add(name)
        return name

    def _record_query(self, span: Any, record: tuple[Any, ...]) -> None:
        statement = record[_STMT]
        max_length = self._settings.statement_max_length
        analysis = analyze(statement, max_length, record[_SYS]) if isinstance(statement, str) else None
        if record[_KIND] != KIND_QUERY:  # a call to a key-value or document store: its duration only
            if self._provider is not None:
                self._query_metrics(span, record, analysis, sql=False)
            return
        for sink in self._sinks:
            try:
                sink.query(span, record, analysis)
            except Exception as exc:  # noqa: BLE001 - one sink's bug must not stop the others
                internal_error("sink", exc)
        if self._provider is not None:
            self._query_metrics(span, record, analysis)

    def _query_metrics(self, span: Any, record: tuple[Any, ...], analysis: Any, sql: bool = True) -> None:
        attrs = span.attributes or {}
        labels: dict[str, Any] = {}
        system = attrs.get(A.DB_SYSTEM_NAME) or attrs.get(A.DB_SYSTEM)
        if system:
            labels["db.system.name"] = system
        # our own parse first: the SQLAlchemy instrumentation's db.operation.name is the first word
        # followed by the database name ("SELECT /srv/app.db"), unfit for a metric label
        operation: Any = ""
        table = attrs.get("db.collection.name")
        if analysis is not None:
            operation = analysis.operation
            table = table or analysis.table
        if not operation:
            operation = attrs.get("db.operation.name") or ""
        if operation:
            # an operation keyword only: contrib's value is the statement's first piece, maybe a literal
            if sql:
                labels["db.operation.name"] = operation.upper() if str(operation).lower() in OPERATIONS else _OTHER
            else:  # a command name (our analysis keeps only that): bounded by the store's command set
                labels["db.operation.name"] = operation if _COMMAND.fullmatch(str(operation)) else _OTHER
        if table:
            labels["db.collection.name"] = self._table(str(table))
        error = _error_type(span)
        if error:
            labels["error.type"] = error
        context = _context_of(span)
        self._db_duration.record(record[_DUR] / 1e9, labels, context=context)
        if sql and record[_SLOW]:
            self._slow.add(1, labels, context=context)

    def _record_request(self, span: Any, request: Any) -> None:
        attrs = span.attributes or {}
        route, labels = route_labels(attrs)
        for sink in self._sinks:
            try:
                sink.request(span, request, route)
            except Exception as exc:  # noqa: BLE001
                internal_error("sink", exc)
        if self._provider is None:
            return
        context = _context_of(span)
        records = list(request.records)
        count, db_ns = len(records), 0
        counts: dict[str, int] = {}
        tables: dict[str, str] = {}
        max_length = self._settings.statement_max_length
        for record in records:
            db_ns += record[_DUR]
            statement = record[_STMT]
            if isinstance(statement, str):
                analysis = analyze(statement, max_length, record[_SYS])
                counts[analysis.fingerprint] = counts.get(analysis.fingerprint, 0) + 1
                tables[analysis.fingerprint] = analysis.table
        more, more_ns, _ = request.overflow
        self._request_db.record((db_ns + more_ns) / 1e9, labels, context=context)
        self._request_queries.record(count + more, labels, context=context)
        threshold = self._settings.n_plus_one_threshold
        for fingerprint, repeats in counts.items():
            if repeats >= threshold:
                n1 = dict(labels)
                if tables[fingerprint]:
                    n1["db.collection.name"] = self._table(tables[fingerprint])
                self._n_plus_one.add(1, n1, context=context)
        if span.kind is SpanKind.SERVER:
            self._record_http(span, attrs, route, context)

    def _record_http(self, span: Any, attrs: Any, route: Any, context: Context) -> None:
        if not self._http_checked:
            self._http_checked = True
            if not _framework_records_http(self._provider):
                self._http_duration = self._meter.create_histogram(
                    M.HTTP_SERVER_REQUEST_DURATION.name, unit="s", description="Duration of HTTP server requests."
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
    return _OTHER


def _framework_records_http(provider: Any) -> bool:
    """Whether another scope (a framework instrumentation) made ``http.server.request.duration``."""
    name = M.HTTP_SERVER_REQUEST_DURATION.name
    for scope, meter in list(getattr(provider, "_meters", {}).items()):
        if getattr(scope, "name", "") == _SCOPE:
            continue
        for instrument in list(getattr(meter, "_instrument_id_instrument", {}).values()):
            if getattr(instrument, "name", "") == name:
                return True
    return False
