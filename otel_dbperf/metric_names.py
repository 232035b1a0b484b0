"""Metric names: the public contract of design.md section 5, and what Prometheus shows.

The alert rules and dashboards use the Prometheus names; tests derive them from here.
"""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    name: str  # the OpenTelemetry name
    unit: str  # UCUM unit, "" for a plain count
    kind: str  # "histogram", "counter" or "gauge"

    @property
    def prometheus(self) -> str:
        """The name after the OTLP -> Prometheus translation (unit suffix, _total for counters)."""
        base = self.name.replace(".", "_")
        base += {"s": "_seconds", "By": "_bytes"}.get(self.unit, "")
        return base + "_total" if self.kind == "counter" else base


DB_CLIENT_OPERATION_DURATION = Metric("db.client.operation.duration", "s", "histogram")
DB_SLOW_QUERIES = Metric("dbperf.db.slow_queries", "", "counter")
DB_N_PLUS_ONE = Metric("dbperf.db.n_plus_one", "", "counter")
REQUEST_DB_DURATION = Metric("dbperf.request.db.duration", "s", "histogram")
REQUEST_DB_QUERIES = Metric("dbperf.request.db.queries", "", "histogram")
HTTP_SERVER_REQUEST_DURATION = Metric("http.server.request.duration", "s", "histogram")
# SQLAlchemy connection pools (semconv names), by db.client.connection.pool.name
DB_CLIENT_CONNECTION_COUNT = Metric("db.client.connection.count", "", "gauge")  # and db.client.connection.state
DB_CLIENT_CONNECTION_MAX = Metric("db.client.connection.max", "", "gauge")
DB_CLIENT_CONNECTION_IDLE_MAX = Metric("db.client.connection.idle.max", "", "gauge")
DB_CLIENT_CONNECTION_PENDING_REQUESTS = Metric("db.client.connection.pending_requests", "", "gauge")
DB_CLIENT_CONNECTION_TIMEOUTS = Metric("db.client.connection.timeouts", "", "counter")
DB_CLIENT_CONNECTION_WAIT_TIME = Metric("db.client.connection.wait_time", "s", "histogram")
DB_CLIENT_CONNECTION_USE_TIME = Metric("db.client.connection.use_time", "s", "histogram")
DB_CLIENT_CONNECTION_CREATE_TIME = Metric("db.client.connection.create_time", "s", "histogram")
# classified database errors, by dbperf.db.error.kind (and db.system.name)
DB_ERRORS = Metric("dbperf.db.errors", "", "counter")
# process resource metrics (semconv names, as the system-metrics instrumentation emits them)
PROCESS_CPU_TIME = Metric("process.cpu.time", "s", "counter")
PROCESS_MEMORY_USAGE = Metric("process.memory.usage", "By", "gauge")
# the request findings beyond N+1 (dbperf.finding: cpu_bound, http_n_plus_one, event_loop_blocked,
# sequential_queries), by the request's route label; and each asyncio event-loop stall's length
REQUEST_FINDINGS = Metric("dbperf.request.findings", "", "counter")
EVENT_LOOP_BLOCKED = Metric("dbperf.event_loop.blocked", "s", "histogram")
# otel-dbperf's own health: spans whose metrics were dropped (derivation queue full)
METRICS_DROPPED = Metric("dbperf.metrics.dropped", "", "counter")

ALL = (
    DB_CLIENT_OPERATION_DURATION,
    DB_SLOW_QUERIES,
    DB_N_PLUS_ONE,
    REQUEST_DB_DURATION,
    REQUEST_DB_QUERIES,
    HTTP_SERVER_REQUEST_DURATION,
    DB_CLIENT_CONNECTION_COUNT,
    DB_CLIENT_CONNECTION_MAX,
    DB_CLIENT_CONNECTION_IDLE_MAX,
    DB_CLIENT_CONNECTION_PENDING_REQUESTS,
    DB_CLIENT_CONNECTION_TIMEOUTS,
    DB_CLIENT_CONNECTION_WAIT_TIME,
    DB_CLIENT_CONNECTION_USE_TIME,
    DB_CLIENT_CONNECTION_CREATE_TIME,
    DB_ERRORS,
    PROCESS_CPU_TIME,
    PROCESS_MEMORY_USAGE,
    METRICS_DROPPED,
    REQUEST_FINDINGS,
    EVENT_LOOP_BLOCKED,
)
