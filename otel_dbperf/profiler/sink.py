"""Feeds the profiler's history from otel-dbperf's derivation thread (never the request thread)."""

from __future__ import annotations

from typing import Any

from .. import attributes as A
from .._pipeline.findings import findings_of
from .._pipeline.pending import PendingByRequest
from .._pipeline.record import Query, Request, Rollup
from .._pipeline.sink import Sink
from .._pipeline.suggest import relationship_fix
from .history import QueryHistory

#: a request's queries wait for its root span (which names the route) in a bounded table:
#: at most this many requests (beyond, the oldest request's queries are added without a route) ...
MAX_PENDING_REQUESTS = 256
#: ... and this many queries each (beyond, added at once without a route)
MAX_PENDING_PER_REQUEST = 64
#: ... and at most this long (a request still running then: its queries are added without a route)
MAX_PENDING_S = 60.0


class HistorySink(Sink):
    """A sink of ``_pipeline.derive``: one history entry per DB query (nested driver spans excluded),
    added when its request's root span arrives, with the request's route."""

    def __init__(
        self, history: QueryHistory, sanitize: bool = True, thresholds: Any = None, resources: bool = True
    ) -> None:
        """``thresholds`` (the processor's): judge each request's findings beyond N+1 queries with them
        (None: not counted); ``resources``: requests carry their CPU time (``DBPERF_RESOURCE_SAMPLES``)."""
        self.history = history
        self._sanitize = sanitize
        self._thresholds = thresholds
        self._resources = resources
        self._pending: PendingByRequest[dict[str, Any]] = PendingByRequest(
            self._add,
            lambda entry: self._add(entry, ""),
            MAX_PENDING_REQUESTS,
            MAX_PENDING_PER_REQUEST,
            MAX_PENDING_S,
        )

    def after_fork_in_child(self) -> None:
        """A forked child: the queries waiting for the parent's requests are the parent's."""
        self._pending.clear()

    def _add(self, entry: dict[str, Any], route: str) -> None:
        self.history.add(route=route, **entry)

    def query(self, span: Any, query: Query) -> None:
        analysis = query.facts
        attrs = span.attributes or {}
        context = span.get_span_context()
        location = query.location
        plan: dict[str, Any] = query.plan[0] if query.plan is not None else {}
        statement = query.statement or ""
        if analysis is not None and self._sanitize:
            statement = analysis.sanitized
        relationship, suggestion = relationship_fix(query.relationship) if query.relationship is not None else ("", "")
        resource = getattr(span, "resource", None)
        instance = resource.attributes.get("service.instance.id", "") if resource is not None else ""
        entry = {
            "duration_s": query.duration_ns / 1e9,
            "statement": statement,
            "timestamp": (span.end_time or 0) / 1e9 or None,
            "fingerprint": analysis.fingerprint if analysis is not None else "",
            "operation": analysis.operation if analysis is not None else "",
            "table": analysis.table if analysis is not None else "",
            "db_system": str(attrs.get(A.DB_SYSTEM_NAME) or attrs.get(A.DB_SYSTEM) or ""),
            "slow": bool(query.slow),
            "code_location": f"{location[0]}:{location[1]}" if location else "",
            "function": location[2] if location else "",
            "stacktrace": query.stack or "",
            "plan": plan.get(A.EXPLAIN_PLAN),
            "plan_format": plan.get(A.EXPLAIN_FORMAT),
            "verdict": plan.get(A.EXPLAIN_VERDICT),
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
            "cpu_time_ms": query.cpu_ns / 1e6 if query.cpu_ns >= 0 else None,
            "memory_delta_bytes": query.rss_delta,
            "error_type": str(attrs.get("error.type") or ""),
            "service_instance_id": str(instance or ""),
            "relationship": relationship,
            "suggestion": suggestion,
        }
        self._pending.add(query.request, entry)

    def request(self, span: Any, request: Request, rollup: Rollup, route: str) -> None:
        self._pending.done(request, route)
        extras = request.extras or {}
        self.history.add_request(
            route or str(getattr(span, "name", "") or ""),
            rollup.count,
            rollup.db_ns / 1e9,
            float(extras.get(A.DB_POOL_WAIT_MS, 0.0)),
            int(extras.get(A.DB_POOL_TIMEOUTS, 0)),
            findings_of(request, self._thresholds, self._resources).kinds() if self._thresholds is not None else (),
        )
