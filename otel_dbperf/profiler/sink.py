"""Feeds the profiler's history from otel-dbperf's derivation thread (never the request thread)."""

from __future__ import annotations

from typing import Any

from .. import attributes as A
from .._processor import _CPU, _DUR, _LOC, _REL, _SLOW, _STACK, _STMT
from .._suggest import relationship_fix
from .history import QueryHistory


class HistorySink:
    """``query(span, record, analysis)``: one history entry per DB query (nested driver spans excluded)."""

    def __init__(self, history: QueryHistory, sanitize: bool = True) -> None:
        self.history = history
        self._sanitize = sanitize

    def query(self, span: Any, record: tuple[Any, ...], analysis: Any) -> None:
        attrs = span.attributes or {}
        context = span.get_span_context()
        location = record[_LOC]
        plan: dict[str, Any] = {}
        for event in span.events:
            if event.name == A.EVENT_EXPLAIN:
                plan = dict(event.attributes or {})
        statement = record[_STMT] or ""
        relationship, suggestion = relationship_fix(record[_REL]) if record[_REL] is not None else ("", "")
        if analysis is not None and self._sanitize:
            statement = analysis.sanitized
        self.history.add(
            record[_DUR] / 1e9,
            statement,
            timestamp=(span.end_time or 0) / 1e9 or None,
            fingerprint=analysis.fingerprint if analysis is not None else "",
            operation=analysis.operation if analysis is not None else "",
            table=analysis.table if analysis is not None else "",
            db_system=str(attrs.get(A.DB_SYSTEM_NAME) or attrs.get(A.DB_SYSTEM) or ""),
            slow=bool(record[_SLOW]),
            code_location=f"{location[0]}:{location[1]}" if location else "",
            function=location[2] if location else "",
            stacktrace=record[_STACK] or "",
            plan=plan.get(A.EXPLAIN_PLAN),
            plan_format=plan.get(A.EXPLAIN_FORMAT),
            verdict=plan.get(A.EXPLAIN_VERDICT),
            trace_id=format(context.trace_id, "032x"),
            span_id=format(context.span_id, "016x"),
            cpu_time_ms=record[_CPU] / 1e6 if record[_CPU] >= 0 else None,
            error_type=str(attrs.get("error.type") or ""),
            relationship=relationship,
            suggestion=suggestion,
        )

    def request(self, span: Any, request: Any, route: str) -> None:
        pass
