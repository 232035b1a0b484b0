"""Metric Views as data: explicit buckets and attribute allowlists for the section 5 metrics.

``DEFAULT_VIEWS`` is what ``opentelemetry-instrument`` installs (with the configured
slow-query threshold as a bucket boundary). Apps that set OpenTelemetry up in code
extend it::

    from opentelemetry.sdk.metrics.view import View
    from otel_dbperf.metrics import default_views

    otel_dbperf.configure(views=(*default_views(), View(instrument_name="my.metric", ...)))

Every allowlist keeps cardinality bounded: no statements, fingerprints or ids.
"""

from __future__ import annotations

from opentelemetry.sdk.metrics.view import DropAggregation, ExplicitBucketHistogramAggregation, View

from . import metric_names as M

METER_NAME = "otel_dbperf"  # the instrumentation scope of the metrics otel-dbperf derives
#: the contrib instrumentations built on opentelemetry-instrumentation-dbapi
DBAPI_SCOPES = tuple(
    f"opentelemetry.instrumentation.{name}"
    for name in ("dbapi", "sqlite3", "psycopg", "psycopg2", "pymysql", "mysql", "mysqlclient", "pymssql", "aiopg")
)

#: semconv's advice for ``db.client.operation.duration`` (seconds)
DB_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
#: semconv's advice for ``http.server.request.duration`` (seconds)
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: queries per request
QUERY_COUNT_BUCKETS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)

DB_ATTRIBUTES = frozenset({"db.system.name", "db.operation.name", "db.collection.name", "error.type"})
#: a request's route, or a Celery task's name (a task's root span has no http.route)
ROUTE_ATTRIBUTES = frozenset({"http.route", "celery.task_name"})
N_PLUS_ONE_ATTRIBUTES = frozenset({"http.route", "celery.task_name", "db.collection.name"})
HTTP_ATTRIBUTES = frozenset({"http.route", "http.request.method", "http.response.status_code", "error.type"})
#: contrib's DB-API metric of rows per query, kept without the statement-derived db.operation.name
RETURNED_ROWS = "db.client.response.returned_rows"
RETURNED_ROWS_ATTRIBUTES = frozenset({"db.system.name", "db.namespace", "server.address", "server.port", "error.type"})
#: the connection-pool metrics (semconv): the pool, and for db.client.connection.count its state
POOL_ATTRIBUTES = frozenset({"db.client.connection.pool.name", "db.client.connection.state"})
ERROR_ATTRIBUTES = frozenset({"dbperf.db.error.kind"})
#: seconds waiting for a pooled connection (the 0.1 s bound is the saturation alert's)
POOL_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: seconds a connection stays checked out
POOL_USE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: the SQLAlchemy instrumentation's deprecated pool metric, dropped (db.client.connection.count replaces it)
CONTRIB_POOL_USAGE = "db.client.connections.usage"
SQLALCHEMY_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
PROCESS_CPU_ATTRIBUTES = frozenset({"type", "cpu.mode"})  # "type" today, semconv's "cpu.mode" later


def with_boundary(buckets: tuple[float, ...], boundary_s: float) -> tuple[float, ...]:
    """``buckets`` with ``boundary_s`` added, so "share of values <= boundary" is exact."""
    return tuple(sorted({*buckets, boundary_s}))


def default_views(slow_query_threshold_ms: float = 100.0) -> tuple[View, ...]:
    """The views for the section 5 metrics, with the slow threshold as a DB bucket boundary."""
    threshold_s = slow_query_threshold_ms / 1000.0
    return (
        View(
            instrument_name=M.DB_CLIENT_OPERATION_DURATION.name,
            meter_name=METER_NAME,
            aggregation=ExplicitBucketHistogramAggregation(with_boundary(DB_DURATION_BUCKETS, threshold_s)),
            attribute_keys=set(DB_ATTRIBUTES),
        ),
        # The DB-API instrumentations (sqlite3, psycopg, psycopg2, ...) record their own copy under
        # the database semconv opt-in, without db.collection.name; ours already counts every query
        # (ORM or driver level, once), so theirs would double every sum in Prometheus. One view per
        # scope: a name-only drop view would also match ours and double the cost of every record.
        # Each dropped stream gets its own name: the SDK compares streams by name, unit and
        # aggregation only (not scope), so two DB-API drivers in one process (sqlite3 and psycopg)
        # would otherwise log "Views ... will cause conflicting metrics identities".
        *(
            View(
                instrument_name=M.DB_CLIENT_OPERATION_DURATION.name,
                meter_name=scope,
                name=f"{M.DB_CLIENT_OPERATION_DURATION.name}.dropped.{scope}",
                aggregation=DropAggregation(),
            )
            for scope in DBAPI_SCOPES
        ),
        # Their db.client.response.returned_rows carries db.operation.name = the statement's first
        # whitespace-separated piece (``VALUES('x')``, ``SELECT'x'``): a literal, so not kept.
        *(
            View(instrument_name=RETURNED_ROWS, meter_name=scope, attribute_keys=set(RETURNED_ROWS_ATTRIBUTES))
            for scope in DBAPI_SCOPES
        ),
        View(instrument_name=M.DB_SLOW_QUERIES.name, attribute_keys=set(DB_ATTRIBUTES)),
        View(instrument_name=M.DB_N_PLUS_ONE.name, attribute_keys=set(N_PLUS_ONE_ATTRIBUTES)),
        View(
            instrument_name=M.REQUEST_DB_DURATION.name,
            aggregation=ExplicitBucketHistogramAggregation(HTTP_DURATION_BUCKETS),
            attribute_keys=set(ROUTE_ATTRIBUTES),
        ),
        View(
            instrument_name=M.REQUEST_DB_QUERIES.name,
            aggregation=ExplicitBucketHistogramAggregation(QUERY_COUNT_BUCKETS),
            attribute_keys=set(ROUTE_ATTRIBUTES),
        ),
        View(
            instrument_name=M.HTTP_SERVER_REQUEST_DURATION.name,
            aggregation=ExplicitBucketHistogramAggregation(HTTP_DURATION_BUCKETS),
            attribute_keys=set(HTTP_ATTRIBUTES),
        ),
        View(instrument_name=M.PROCESS_CPU_TIME.name, attribute_keys=set(PROCESS_CPU_ATTRIBUTES)),
        View(
            instrument_name=M.DB_CLIENT_CONNECTION_WAIT_TIME.name,
            meter_name=METER_NAME,
            aggregation=ExplicitBucketHistogramAggregation(with_boundary(POOL_WAIT_BUCKETS, threshold_s)),
            attribute_keys=set(POOL_ATTRIBUTES),
        ),
        View(
            instrument_name=M.DB_CLIENT_CONNECTION_USE_TIME.name,
            meter_name=METER_NAME,
            aggregation=ExplicitBucketHistogramAggregation(with_boundary(POOL_USE_BUCKETS, threshold_s)),
            attribute_keys=set(POOL_ATTRIBUTES),
        ),
        View(
            instrument_name=M.DB_CLIENT_CONNECTION_CREATE_TIME.name,
            meter_name=METER_NAME,
            aggregation=ExplicitBucketHistogramAggregation(DB_DURATION_BUCKETS),
            attribute_keys=set(POOL_ATTRIBUTES),
        ),
        View(instrument_name=M.DB_ERRORS.name, meter_name=METER_NAME, attribute_keys=set(ERROR_ATTRIBUTES)),
        # contrib's deprecated pool gauge: one source for pool usage (ours, the semconv names)
        View(instrument_name=CONTRIB_POOL_USAGE, meter_name=SQLALCHEMY_SCOPE, aggregation=DropAggregation()),
    )


DEFAULT_VIEWS = default_views()

#: The system-metrics instrumentation's configuration: process CPU and memory only.
SYSTEM_METRICS_CONFIG: dict[str, list[str] | None] = {
    M.PROCESS_CPU_TIME.name: ["user", "system"],
    M.PROCESS_MEMORY_USAGE.name: None,
}
