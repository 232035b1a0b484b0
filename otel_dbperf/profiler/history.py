"""The profiler's query history: the last ``max_history`` queries plus running totals.

Totals (counts, durations, counts by table and operation) outlive the window; the
per-key counts are capped so that a stream of distinct table names cannot grow them.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .. import _forksafe
from .._guard import internal_error

MAX_KEYS = 100  # distinct tables / operations counted by name; the rest fold into OTHER
OTHER = "_other"
NONE = "_none"  # the key for a query with no known table / operation


class ProfilerBusy(Exception):
    """The view cannot answer now (another request is asking the workers): the API says 503, retry."""


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
    pid: int = 0  # the process that ran the query
    service_instance_id: str = ""
    relationship: str = ""  # the SQLAlchemy relationship this query lazily loaded ("Author.books"), or ""
    suggestion: str = ""  # the loader option that loads it up front ("selectinload(Author.books)"), or ""
    memory_delta_bytes: int | None = None  # process RSS change over the query (DBPERF_RESOURCE_SAMPLES=query)

    def summary(self) -> dict[str, Any]:
        """The entry without its bulky fields (stacktrace, plan), for lists: seed 000's fields
        (``query``, ``duration``, ``query_type``, ``memory_delta``, ``cpu_percent``,
        ``has_stack_trace``) beside ours."""
        return {
            "query": self.statement,
            "duration": self.duration_s,
            "query_type": query_type(self.operation),
            "memory_delta": self.memory_delta(),
            "cpu_percent": self.cpu_percent(),
            "has_stack_trace": bool(self.stacktrace),
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
            "relationship": self.relationship,
            "suggestion": self.suggestion,
            "has_stacktrace": bool(self.stacktrace),
            "has_plan": self.plan is not None,
            "pid": self.pid,
            "service_instance_id": self.service_instance_id,
        }

    def details(self) -> dict[str, Any]:
        """Every field, plus seed 000's names (``stack_trace`` as a list of lines). Never the
        query's parameters: they are not recorded."""
        data = asdict(self)
        data.update(
            query=self.statement,
            duration=self.duration_s,
            query_type=query_type(self.operation),
            memory_delta=self.memory_delta(),
            cpu_percent=self.cpu_percent(),
            stack_trace=stack_lines(self.stacktrace),
        )
        return data

    def memory_delta(self) -> float | None:
        """Seed 000's ``memory_delta``: the process's RSS change over the query, in MB (None: not sampled)."""
        if self.memory_delta_bytes is None:
            return None
        return round(self.memory_delta_bytes / (1024 * 1024), 3)

    def cpu_percent(self) -> float | None:
        """CPU time of the querying thread over the query's wall-clock time, when sampled."""
        if self.cpu_time_ms is None or self.duration_s <= 0:
            return None
        return round(min(100.0, self.cpu_time_ms / (self.duration_s * 10.0)), 1)


#: operations that only read; everything else that changes data or schema is a write
_READS = frozenset(["SELECT", "SHOW", "EXPLAIN", "DESCRIBE", "VALUES", "TABLE"])
_OTHERS = frozenset(["", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET", "START"])


def query_type(operation: str) -> str:
    """Seed 000's ``query_type``: ``read``, ``write``, or ``other`` (transaction control, unknown)."""
    operation = operation.upper()
    if operation in _READS:
        return "read"
    return "other" if operation in _OTHERS else "write"


def stack_lines(stacktrace: str) -> list[str]:
    """The stack as a list of lines (``File "app.py", line 4, in view``), most recent call last."""
    return [line.strip() for line in stacktrace.splitlines()[1:] if line.strip()] if stacktrace else []


_own_pid = [os.getpid()]


def _pid() -> int:
    return _own_pid[0]


def _after_fork() -> None:
    _own_pid[0] = os.getpid()


_forksafe.register(_after_fork)


#: a route's request figures in the totals: those summed, and the one kept as a maximum
ROUTE_SUMS = (
    "requests", "db_queries", "db_duration_s", "pool_wait_ms", "pool_waited_requests", "pool_timeouts",
    # requests with each finding beyond N+1 queries (see _pipeline.findings)
    "cpu_bound_requests", "http_n_plus_one_requests", "event_loop_blocked_requests", "sequential_queries_requests",
)  # fmt: skip
ROUTE_MAXES = ("max_pool_wait_ms",)
#: the route figures that count requests with a finding beyond N+1 queries
FINDING_SUMS = ROUTE_SUMS[6:]


def add_route(routes: dict[str, dict[str, float]], route: str, figures: Mapping[str, float]) -> None:
    """Add one request's (or a whole route row's) figures to ``routes`` under ``route``: at most
    :data:`MAX_KEYS` routes, the rest fold into :data:`OTHER`."""
    key = route or NONE
    row = routes.get(key)
    if row is None:
        if len(routes) >= MAX_KEYS:
            key = OTHER
            row = routes.get(key)
        if row is None:
            row = routes[key] = dict.fromkeys(ROUTE_SUMS + ROUTE_MAXES, 0)
    for name in ROUTE_SUMS:
        row[name] += figures.get(name, 0)
    for name in ROUTE_MAXES:
        value = figures.get(name, 0)
        if value > row[name]:
            row[name] = value


def copy_routes(routes: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {route: dict(row) for route, row in routes.items()}


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
        self._lock = _forksafe.lock("profiler.history")
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
        self.by_route: dict[str, dict[str, float]] = {}  # see add_request
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
        service_instance_id: str = "",
        relationship: str = "",
        suggestion: str = "",
        memory_delta_bytes: int | None = None,
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
                        _pid(),
                        service_instance_id,
                        relationship,
                        suggestion,
                        memory_delta_bytes,
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

    def add_request(
        self,
        route: str,
        db_queries: int,
        db_duration_s: float,
        pool_wait_ms: float,
        pool_timeouts: int,
        findings: Sequence[str] = (),
    ) -> None:
        """Count one finished request (web request, task, profile session) under its route: its
        queries and DB time, how long it waited for pooled connections and its pool timeouts, and
        its findings beyond N+1 queries (``cpu_bound``, ``http_n_plus_one``, ...)."""
        try:
            if not self.enabled:
                return  # its queries were counted as dropped
            figures = {
                "requests": 1,
                "db_queries": int(db_queries),
                "db_duration_s": float(db_duration_s),
                "pool_wait_ms": float(pool_wait_ms),
                "pool_waited_requests": int(pool_wait_ms > 0),
                "pool_timeouts": int(pool_timeouts),
                "max_pool_wait_ms": float(pool_wait_ms),
            }
            for kind in findings:
                name = f"{kind}_requests"
                if name in ROUTE_SUMS:
                    figures[name] = 1
            with self._lock:
                add_route(self.by_route, route, figures)
        except Exception as exc:  # noqa: BLE001 - never into the exporter thread
            internal_error("profiler.add_request", exc)

    def entries(self, last_n: int | None = None) -> list[QueryEntry]:
        """A snapshot of the kept entries, oldest first (the last ``last_n`` if given)."""
        with self._lock:
            if last_n is None or last_n >= len(self._entries):
                return list(self._entries)
            start = len(self._entries) - last_n
            return [self._entries[i] for i in range(start, len(self._entries))]

    def slowest(self, threshold_s: float, limit: int) -> tuple[int, list[QueryEntry]]:
        """(how many kept queries took ``threshold_s`` or more, the ``limit`` slowest of them)."""
        matching = [e for e in self.entries() if e.duration_s >= threshold_s]
        return len(matching), slowest_first(matching)[:limit]

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
                "requests_by_route": copy_routes(self.by_route),
                "kept": len(self._entries),
                "max_history": self.max_history,
                "dropped": self.dropped,
                "evicted": self.evicted,
            }

    def last_seen_totals(self) -> dict[str, Any]:
        """What ``health`` reads: in one process, the totals themselves (nothing to ask)."""
        return self.totals()

    def reset(self) -> None:
        """Forget the entries and the totals (ids go on increasing)."""
        with self._lock:
            self._entries.clear()
            self._clear()


def slowest_first(entries: list[QueryEntry]) -> list[QueryEntry]:
    """Longest first; among equal durations the newest (highest id) first."""
    return sorted(entries, key=lambda e: (e.duration_s, e.id), reverse=True)


def _id_hex(value: int, width: int) -> str:
    return format(value, f"0{width}x") if value else ""
