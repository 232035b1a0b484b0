"""The profiler's query history: the last ``max_history`` queries plus running totals.

Totals (counts, durations, counts by table and operation) outlive the window; the
per-key counts are capped so that a stream of distinct table names cannot grow them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .. import attributes as A
from .._guard import internal_error

MAX_KEYS = 100  # distinct tables / operations counted by name; the rest fold into OTHER
OTHER = "_other"
NONE = "_none"  # the key for a query with no known table / operation


@dataclass(frozen=True, slots=True)
class QueryEntry:
    """One DB query as kept in the history (statement already sanitized by the caller)."""

    id: int
    timestamp: float  # unix seconds
    duration_s: float
    statement: str
    fingerprint: str = ""
    operation: str = ""
    table: str = ""
    db_system: str = ""
    slow: bool = False
    code_location: str = ""  # "file:line" or ""
    function: str = ""
    stacktrace: str = ""
    plan: str | None = None
    plan_format: str | None = None
    verdict: str | None = None
    trace_id: str = ""  # 32 hex
    span_id: str = ""  # 16 hex
    route: str = ""
    cpu_time_ms: float | None = None
    error_type: str = ""

    def summary(self) -> dict[str, Any]:
        """The entry without its bulky fields (stacktrace, plan), for lists."""
        return {
            "id": self.id,
            "timestamp": self.timestamp,
            "duration_s": self.duration_s,
            "statement": self.statement,
            "fingerprint": self.fingerprint,
            "operation": self.operation,
            "table": self.table,
            "db_system": self.db_system,
            "slow": self.slow,
            "code_location": self.code_location,
            "trace_id": self.trace_id,
            "route": self.route,
            "cpu_time_ms": self.cpu_time_ms,
            "error_type": self.error_type,
            "has_stacktrace": bool(self.stacktrace),
            "has_plan": self.plan is not None,
        }


def _bump(counts: dict[str, int], key: str) -> None:
    key = key or NONE
    if key in counts or len(counts) < MAX_KEYS:
        counts[key] = counts.get(key, 0) + 1
    else:
        counts[OTHER] = counts.get(OTHER, 0) + 1


class QueryHistory:
    """A bounded, thread-safe history of DB queries with totals kept beyond the window.

    ``add`` is O(1) and never raises (it runs on the exporter thread). Ids increase by one
    per kept entry and are never reused, not even after :meth:`reset`, so an old id can
    never point at a newer query.
    """

    def __init__(self, max_history: int = 1000) -> None:
        if max_history < 1:
            raise ValueError("max_history must be >= 1")
        self.max_history = max_history
        self._lock = threading.Lock()
        self._entries: deque[QueryEntry] = deque(maxlen=max_history)
        self._next_id = 1
        self.enabled = True
        self._clear()

    def _clear(self) -> None:
        self.total = 0
        self.slow = 0
        self.total_duration_s = 0.0
        self.max_duration_s = 0.0
        self.by_table: dict[str, int] = {}
        self.by_operation: dict[str, int] = {}
        self.dropped = 0  # offered while disabled
        self.evicted = 0  # pushed out of the window by newer entries

    def add(
        self,
        duration_s: float,
        statement: str,
        *,
        timestamp: float | None = None,
        fingerprint: str = "",
        operation: str = "",
        table: str = "",
        db_system: str = "",
        slow: bool = False,
        code_location: str = "",
        function: str = "",
        stacktrace: str = "",
        plan: str | None = None,
        plan_format: str | None = None,
        verdict: str | None = None,
        trace_id: str = "",
        span_id: str = "",
        route: str = "",
        cpu_time_ms: float | None = None,
        error_type: str = "",
    ) -> int:
        """Record one query; returns its id, or 0 when the profiler is disabled."""
        try:
            if not self.enabled:
                with self._lock:
                    self.dropped += 1
                return 0
            if timestamp is None:
                timestamp = time.time()
            duration_s = float(duration_s)
            with self._lock:
                entry_id = self._next_id
                self._next_id += 1
                if len(self._entries) == self.max_history:
                    self.evicted += 1
                self._entries.append(
                    QueryEntry(
                        entry_id,
                        timestamp,
                        duration_s,
                        statement,
                        fingerprint,
                        operation,
                        table,
                        db_system,
                        slow,
                        code_location,
                        function,
                        stacktrace,
                        plan,
                        plan_format,
                        verdict,
                        trace_id,
                        span_id,
                        route,
                        cpu_time_ms,
                        error_type,
                    )
                )
                self.total += 1
                self.slow += bool(slow)
                self.total_duration_s += duration_s
                if duration_s > self.max_duration_s:
                    self.max_duration_s = duration_s
                _bump(self.by_table, table)
                _bump(self.by_operation, operation)
            return entry_id
        except Exception as exc:  # noqa: BLE001 - never into the exporter thread
            internal_error("profiler.add", exc)
            return 0

    def entries(self, last_n: int | None = None) -> list[QueryEntry]:
        """A snapshot of the kept entries, oldest first (the last ``last_n`` if given)."""
        with self._lock:
            if last_n is None or last_n >= len(self._entries):
                return list(self._entries)
            start = len(self._entries) - last_n
            return [self._entries[i] for i in range(start, len(self._entries))]

    def get(self, entry_id: int) -> QueryEntry | None:
        with self._lock:
            if not self._entries:
                return None
            # Kept ids are consecutive, so the position follows from the first id.
            index = entry_id - self._entries[0].id
            if 0 <= index < len(self._entries):
                return self._entries[index]
            return None

    def totals(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": self.enabled,
                "total_queries": self.total,
                "slow_queries": self.slow,
                "total_duration_s": self.total_duration_s,
                "max_duration_s": self.max_duration_s,
                "queries_by_table": dict(self.by_table),
                "queries_by_operation": dict(self.by_operation),
                "kept": len(self._entries),
                "max_history": self.max_history,
                "dropped": self.dropped,
                "evicted": self.evicted,
            }

    def reset(self) -> None:
        """Forget the entries and the totals (ids go on increasing)."""
        with self._lock:
            self._entries.clear()
            self._clear()


def _id_hex(value: int, width: int) -> str:
    return format(value, f"0{width}x") if value else ""


def record_span(history: QueryHistory, span: Any, route: str = "") -> int:
    """Add an exported, already enriched DB client span to ``history``; returns the id (0: skipped).

    Meant for the export thread, after the dbperf attributes were added: it reads the
    sanitized statement, fingerprint, slow flag, code location and CPU time from them.
    Spans without ``db.system`` / ``db.system.name`` and nested driver spans are skipped.
    """
    try:
        attrs = span.attributes or {}
        db_system = attrs.get(A.DB_SYSTEM_NAME) or attrs.get(A.DB_SYSTEM)
        if not db_system or attrs.get(A.QUERY_NESTED):
            return 0
        start, end = span.start_time or 0, span.end_time or 0
        statement = attrs.get(A.DB_QUERY_TEXT) or attrs.get(A.DB_STATEMENT) or ""
        file_path, line = attrs.get(A.CODE_FILE_PATH), attrs.get(A.CODE_LINE_NUMBER)
        cpu = attrs.get(A.CPU_TIME_MS)
        context = span.context
        error_type = attrs.get("error.type") or ""
        if not error_type and span.status is not None and span.status.status_code.name == "ERROR":
            error_type = "_OTHER"
        return history.add(
            max(end - start, 0) / 1e9,
            str(statement),
            timestamp=(end or time.time_ns()) / 1e9,
            fingerprint=str(attrs.get(A.QUERY_FINGERPRINT) or ""),
            operation=str(attrs.get("db.operation.name") or attrs.get("db.operation") or ""),
            table=str(attrs.get("db.collection.name") or attrs.get("db.sql.table") or ""),
            db_system=str(db_system),
            slow=bool(attrs.get(A.QUERY_SLOW)),
            code_location=f"{file_path}:{line}" if file_path else "",
            function=str(attrs.get(A.CODE_FUNCTION_NAME) or ""),
            stacktrace=str(attrs.get(A.CODE_STACKTRACE) or ""),
            trace_id=_id_hex(context.trace_id, 32) if context else "",
            span_id=_id_hex(context.span_id, 16) if context else "",
            route=route or str(attrs.get("http.route") or ""),
            cpu_time_ms=float(cpu) if isinstance(cpu, int | float) else None,
            error_type=str(error_type),
        )
    except Exception as exc:  # noqa: BLE001 - never into the exporter thread
        internal_error("profiler.record_span", exc)
        return 0
