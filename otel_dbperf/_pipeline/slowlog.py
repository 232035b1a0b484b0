"""One OpenTelemetry log record per slow query (to Loki through the Collector's log pipeline).

WARN, a readable body, the sanitized statement, fingerprint, code location and route, and
the span's trace and span ids, so Grafana links the line to its trace. Rate-limited per
fingerprint (``DBPERF_SLOW_QUERY_LOGS_PER_MINUTE``) and overall, so a storm of slow queries
cannot flood the log backend; what was suppressed is counted, and reported on the next
record of the same fingerprint (``dbperf.slow_query.suppressed``).

Runs on the derivation thread (a sink of ``_pipeline.derive``), never on the request thread. A slow
query inside a request waits there for its request's root span, which names the route.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.trace import NonRecordingSpan, set_span_in_context

from .. import attributes as A
from ..settings import Settings
from .pending import PendingByRequest
from .record import Query, Request, Rollup, Thresholds
from .sink import Sink
from .suggest import relationship_fix

_WINDOW_S = 60.0
_OVERALL_PER_MINUTE = 120
_MAX_FINGERPRINTS = 10_000
_MAX_PENDING_REQUESTS = 10_000
_MAX_PENDING_PER_REQUEST = 50
SUPPRESSED = A.SLOW_QUERY_SUPPRESSED
EVENT_NAME = A.EVENT_SLOW_QUERY


class SlowQueryLog(Sink):
    def __init__(
        self,
        settings: Settings,
        logger_provider: Any,
        version: str = "",
        clock: Callable[[], float] = time.monotonic,
        thresholds: Thresholds | None = None,  # the processor's (built from ``settings`` when not given)
    ) -> None:
        self._settings = settings
        self._thresholds = thresholds or Thresholds.from_settings(settings)
        self._logger = logger_provider.get_logger("otel_dbperf", version)
        self._per_fp = settings.slow_query_logs_per_minute
        self._clock = clock
        self._windows: OrderedDict[str, list[Any]] = OrderedDict()  # fingerprint -> [start, sent, suppressed]
        self._overall = [clock(), 0]
        # the slow queries of a request, until its root names the route
        self._pending: PendingByRequest[tuple[Any, Query]] = PendingByRequest(
            lambda item, route: self._emit(*item, route),
            lambda item: self._count_suppressed(item[1].facts.fingerprint if item[1].facts else ""),
            _MAX_PENDING_REQUESTS,
            _MAX_PENDING_PER_REQUEST,
        )
        self.emitted = 0
        self.suppressed = 0

    def after_fork_in_child(self) -> None:
        """A forked child: the slow queries waiting for the parent's requests are the parent's."""
        self._pending.clear()

    # sink interface of the derivation thread
    def query(self, span: Any, query: Query) -> None:
        if not query.slow:
            return
        self._pending.add(query.request, (span, query))

    def request(self, span: Any, request: Request, rollup: Rollup, route: str) -> None:
        self._pending.done(request, route)

    def _count_suppressed(self, fingerprint: str) -> None:
        self.suppressed += 1
        window = self._windows.get(fingerprint)
        if window is not None:
            window[2] += 1

    def _allow(self, fingerprint: str) -> tuple[bool, int]:
        """(may send, suppressed since the last one sent for this fingerprint)."""
        now = self._clock()
        overall = self._overall
        if now - overall[0] >= _WINDOW_S:
            overall[0], overall[1] = now, 0
        window = self._windows.get(fingerprint)
        if window is None:
            if len(self._windows) >= _MAX_FINGERPRINTS:
                self._windows.popitem(last=False)
            window = self._windows[fingerprint] = [now, 0, 0]
        elif now - window[0] >= _WINDOW_S:
            window[0], window[1] = now, 0
        if window[1] >= self._per_fp or overall[1] >= _OVERALL_PER_MINUTE:
            window[2] += 1
            self.suppressed += 1
            return False, 0
        window[1] += 1
        overall[1] += 1
        suppressed, window[2] = window[2], 0
        return True, suppressed

    def _emit(self, span: Any, query: Query, route: str) -> None:
        analysis = query.facts
        fingerprint = analysis.fingerprint if analysis is not None else ""
        allowed, suppressed = self._allow(fingerprint)
        if not allowed:
            return
        settings = self._settings
        duration_ms = query.duration_ns / 1e6
        attrs: dict[str, Any] = {
            A.EVENT_DURATION_MS: round(duration_ms, 3),
            A.EVENT_THRESHOLD_MS: self._thresholds.slow_ms,
            SUPPRESSED: suppressed,
        }
        summary = ""
        if analysis is not None:
            attrs[A.QUERY_FINGERPRINT] = fingerprint
            attrs[A.DB_QUERY_TEXT] = analysis.sanitized if settings.sanitize_statements else query.statement
            summary = analysis.summary
            if summary:
                attrs[A.DB_QUERY_SUMMARY] = summary
        span_attrs = span.attributes or {}
        system = span_attrs.get(A.DB_SYSTEM_NAME) or span_attrs.get(A.DB_SYSTEM)
        if system:
            attrs[A.DB_SYSTEM_NAME] = system
        where = ""
        location = query.location
        if location is not None:
            attrs[A.CODE_FILE_PATH], attrs[A.CODE_LINE_NUMBER], attrs[A.CODE_FUNCTION_NAME] = location
            where = f" at {location[0]}:{location[1]}"
        if query.stack:
            attrs[A.CODE_STACKTRACE] = query.stack
        if route:
            attrs["http.route"] = route
        lazy_loads = _lazy_loads(query)
        if lazy_loads >= self._thresholds.n_plus_one:  # this slow query is one of an N+1 of lazy loads
            relationship, suggestion = relationship_fix(query.relationship)
            if relationship:
                attrs[A.N_PLUS_ONE_RELATIONSHIP] = relationship
                attrs[A.N_PLUS_ONE_SUGGESTION] = suggestion
                attrs[A.N_PLUS_ONE_REPEAT_COUNT] = lazy_loads
        if query.plan is not None:  # the plan, when DBPERF_EXPLAIN made one
            attrs.update(query.plan[0])
        body = (
            f"slow query {summary or 'SQL'}: {duration_ms:.1f} ms "
            f"(threshold {self._thresholds.slow_ms:g} ms){where}" + (f" in {route}" if route else "")
        )
        self._logger.emit(
            timestamp=span.end_time,
            context=set_span_in_context(NonRecordingSpan(span.get_span_context())),
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            body=body,
            attributes=attrs,
            event_name=EVENT_NAME,
        )
        self.emitted += 1


def _lazy_loads(query: Query) -> int:
    """How often the query's request lazily loaded the relationship this query loads (0: no lazy load).

    Only for records that are sent (rate-limited), once the request's root came: its records are all in.
    """
    relationship, request = query.relationship, query.request
    if relationship is None or request is None:
        return 0
    return sum(q.relationship is relationship for q in list(request.records))
