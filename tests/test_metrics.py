"""Metric derivation in-process: real SQLite through SQLAlchemy, the SDK's in-memory reader."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_code import queries
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import text
from support.pipeline import APP_CODE, Traced

from otel_dbperf import Settings, _prefork
from otel_dbperf import attributes as A
from otel_dbperf import metric_names as M
from otel_dbperf._pipeline import derive, metrics_sink
from otel_dbperf.metrics import DB_DURATION_BUCKETS, DEFAULT_VIEWS, default_views


class Metered(Traced):
    """Traced with metrics: the deriver feeding a MeterProvider with otel-dbperf's views (or ``views``)."""

    def __init__(self, settings: Settings, views: Any = DEFAULT_VIEWS) -> None:
        super().__init__(settings, metrics=views)


@pytest.fixture
def metered() -> Iterator[Metered]:
    m = Metered(Settings(app_paths=(str(APP_CODE.parent),), slow_query_threshold_ms=50))
    yield m
    m.close()


def by_labels(points: list[Any]) -> dict[frozenset[tuple[str, Any]], Any]:
    return {frozenset(p.attributes.items()): p for p in points}


def test_db_duration_slow_counter_and_exemplars(metered: Metered) -> None:
    with metered.tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.route", "/x")
        for i in range(3):
            queries.point_query(metered.engine, i)
        queries.slow_query(metered.engine, 0.06)
    trace_id = root.get_span_context().trace_id
    db = by_labels(metered.points(M.DB_CLIENT_OPERATION_DURATION.name))
    select_authors = db[frozenset({("db.system.name", "sqlite"), ("db.operation.name", "SELECT"),
                                   ("db.collection.name", "authors")})]  # fmt: skip
    assert isinstance(select_authors, HistogramDataPoint) and select_authors.count == 3
    assert 0.05 in select_authors.explicit_bounds  # the slow threshold is a bucket boundary
    assert set(DB_DURATION_BUCKETS) <= set(select_authors.explicit_bounds)
    assert {e.trace_id for e in select_authors.exemplars} == {trace_id}
    assert all(e.span_id for e in select_authors.exemplars)
    slow_points = metered.points(M.DB_SLOW_QUERIES.name, fresh=False)
    (slow,) = [p for p in slow_points if "db.collection.name" not in p.attributes]  # dbperf_sleep reads no table
    assert slow.value == 1 and slow.attributes["db.operation.name"] == "SELECT"
    # a point query is slow too if this machine made it take 50 ms: counted as its span's flag says
    assert sum(p.value for p in slow_points) == sum(bool(s.attributes[A.QUERY_SLOW]) for s in metered.db_spans())
    (queries_,) = metered.points(M.REQUEST_DB_QUERIES.name, fresh=False)
    assert dict(queries_.attributes) == {"http.route": "/x"} and queries_.sum == 4
    (db_time,) = metered.points(M.REQUEST_DB_DURATION.name, fresh=False)
    assert {e.trace_id for e in db_time.exemplars} == {trace_id}
    assert 0.06 <= db_time.sum < 5
    # no framework instrumentation made http.server.request.duration: derived from the server span
    (http,) = metered.points(M.HTTP_SERVER_REQUEST_DURATION.name, fresh=False)
    assert http.count == 1 and http.attributes["http.route"] == "/x"
    assert {e.trace_id for e in http.exemplars} == {trace_id}


def test_n_plus_one_counter_by_route_and_table(metered: Metered) -> None:
    for route, n in (("/loop", 7), ("/loop", 6), ("/few", 3)):
        with metered.tracer.start_as_current_span("GET", kind=SpanKind.SERVER) as root:
            root.set_attribute("http.route", route)
            queries.n_plus_one(metered.engine, n)
    (n1,) = metered.points(M.DB_N_PLUS_ONE.name)
    assert dict(n1.attributes) == {"http.route": "/loop", "db.collection.name": "authors"}
    assert n1.value == 2
    hist = by_labels(metered.points(M.REQUEST_DB_QUERIES.name))
    assert hist[frozenset({("http.route", "/loop")})].sum == 13
    assert hist[frozenset({("http.route", "/few")})].count == 1


def test_failed_query_has_error_type(metered: Metered) -> None:
    with pytest.raises(Exception, match="no such table"), metered.engine.connect() as conn:
        conn.execute(text("SELECT * FROM missing_table"))
    points = metered.points(M.DB_CLIENT_OPERATION_DURATION.name)
    (failed,) = [p for p in points if "error.type" in p.attributes]
    assert failed.attributes["error.type"] == "sqlite3.OperationalError"
    assert failed.attributes["db.collection.name"] == "missing_table"


def test_views_keep_cardinality_bounded(metered: Metered) -> None:
    with metered.engine.connect() as conn:
        conn.execute(text('CREATE TABLE "weird name;" (x INTEGER)'))
        conn.execute(text('SELECT * FROM "weird name;"'))
    tracer = metered.tracer
    for table in ("t1", "x'; DROP TABLE y; --"):  # DB spans with extra attributes, one with a hostile table name
        with tracer.start_as_current_span("q", kind=SpanKind.CLIENT) as span:
            span.set_attributes({
                "db.system.name": "postgresql", "db.query.text": "SELECT 1 FROM t1 WHERE a = $1",
                "db.collection.name": table, "db.namespace": "shop", "server.address": "db1",
            })  # fmt: skip
    points = metered.points(M.DB_CLIENT_OPERATION_DURATION.name)
    keys = set().union(*(p.attributes.keys() for p in points))
    assert keys <= {"db.system.name", "db.operation.name", "db.collection.name", "error.type"}
    tables = {p.attributes.get("db.collection.name") for p in points}
    assert "_OTHER" in tables and "t1" in tables
    assert not any(t and (" " in t or ";" in t) for t in tables)


def test_table_names_are_capped() -> None:
    m = Metered(Settings(app_paths=(str(APP_CODE.parent),)))
    try:
        (sink,) = [s for s in m.deriver._sinks if isinstance(s, metrics_sink.MetricsSink)]
        names = {sink.table(f"t{i}") for i in range(metrics_sink.MAX_TABLES + 50)}
        assert len(names) == metrics_sink.MAX_TABLES + 1 and "_OTHER" in names
    finally:
        m.meters.shutdown()
        m.provider.shutdown()


def test_queue_is_bounded_and_drops_are_counted(metered: Metered, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(derive, "MAX_QUEUE", 3)
    metered.deriver._lock.acquire()  # hold the drainer so the queue fills
    try:
        for i in range(10):
            queries.point_query(metered.engine, i)
        assert len(metered.deriver.queue) == 3 and metered.deriver.dropped == 7
    finally:
        metered.deriver._lock.release()
    (dropped,) = metered.points(M.METRICS_DROPPED.name)
    assert dropped.value == 7
    (db,) = metered.points(M.DB_CLIENT_OPERATION_DURATION.name)
    assert db.count == 3


def test_default_views_put_the_threshold_in_the_buckets() -> None:
    (view, *_) = default_views(250)
    assert 0.25 in view._aggregation._boundaries
    assert list(view._aggregation._boundaries) == sorted(view._aggregation._boundaries)


def test_metrics_survive_a_broken_span(metered: Metered) -> None:
    with metered.tracer.start_as_current_span("GET", kind=SpanKind.SERVER) as root:
        root.set_status(Status(StatusCode.ERROR))
        root.set_attribute("http.route", "/x")
        root.set_attribute("http.response.status_code", 503)
    (http,) = metered.points(M.HTTP_SERVER_REQUEST_DURATION.name)
    assert http.attributes["error.type"] == "503"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_with_empty_metric_storages(metered: Metered) -> None:
    queries.point_query(metered.engine, 1)
    metered.deriver.drain()
    hooks = _prefork.ForkHooks(metered.meters, metered.deriver)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it would export, then leave without cleanup
        try:
            queries.point_query(metered.engine, 2)
            queries.point_query(metered.engine, 3)
            counts = [p.count for p in metered.points(M.DB_CLIENT_OPERATION_DURATION.name)]
            os.write(write_end, json.dumps(counts).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    child = json.loads(os.read(read_end, 4096) or b"null")
    os.close(read_end)
    assert status == 0 and hooks is not None
    assert child == [2]  # the parent's query was not inherited
    assert [p.count for p in metered.points(M.DB_CLIENT_OPERATION_DURATION.name)] == [1]


@pytest.mark.parametrize(
    ("argv", "env", "refused"),
    [
        (["/v/bin/gunicorn", "-w", "4", "app:app"], {"OTEL_METRICS_EXPORTER": "prometheus"}, "under gunicorn"),
        (["/v/bin/gunicorn", "app:app"], {"OTEL_METRICS_EXPORTER": "otlp"}, None),
        (["/v/bin/uvicorn", "app:app", "--workers", "3"], {"OTEL_METRICS_EXPORTER": "prometheus"}, "uvicorn"),
        (["/v/bin/uvicorn", "app:app"], {"OTEL_METRICS_EXPORTER": "prometheus"}, None),
    ],
)
def test_pull_exporter_refusal(argv: list[str], env: dict[str, str], refused: str | None, tmp_path: Path) -> None:
    env = {**env, "OTEL_EXPORTER_PROMETHEUS_PORT": "0"}
    message = _prefork.pull_refusal(env, argv)
    if refused is None:
        assert message is None
    else:
        assert message is not None and refused in message and "OTEL_METRICS_EXPORTER=otlp" in message


def test_pull_exporter_refused_when_its_port_is_taken() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"OTEL_METRICS_EXPORTER": "otlp,prometheus", "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
               "OTEL_EXPORTER_PROMETHEUS_PORT": str(port)}  # fmt: skip
        message = _prefork.pull_refusal(env, ["-c"])
    assert message is not None and f"127.0.0.1:{port}" in message
    assert _prefork.without_pull_exporter("otlp, prometheus") == "otlp"
    assert _prefork.without_pull_exporter("prometheus") == "none"


def test_driver_instrumentations_copy_of_db_duration_is_dropped(metered: Metered) -> None:
    driver = metered.meters.get_meter("opentelemetry.instrumentation.sqlite3")
    driver.create_histogram(M.DB_CLIENT_OPERATION_DURATION.name, unit="s").record(0.01, {"db.system.name": "sqlite"})
    returned_rows = driver.create_histogram("db.client.response.returned_rows")
    returned_rows.record(3, {"db.system.name": "sqlite"})
    queries.point_query(metered.engine, 1)
    data = metered.reader.get_metrics_data()
    scopes = {(sm.scope.name, m.name) for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert (
        "opentelemetry.instrumentation.sqlite3",
        M.DB_CLIENT_OPERATION_DURATION.name,
    ) not in scopes  # would double Prometheus sums
    assert ("otel_dbperf", M.DB_CLIENT_OPERATION_DURATION.name) in scopes
    assert ("opentelemetry.instrumentation.sqlite3", "db.client.response.returned_rows") in scopes


def test_sdk_patch_gives_the_sdks_meter_provider_our_views_and_is_undone() -> None:
    from opentelemetry.sdk import _configuration as sdk_configuration

    from otel_dbperf import _runtime as _setup

    original = sdk_configuration.MeterProvider  # type: ignore[attr-defined]
    with _setup.sdk_patches(Settings(slow_query_threshold_ms=250), None):
        provider = sdk_configuration.MeterProvider(metric_readers=[])  # type: ignore[attr-defined]
    assert sdk_configuration.MeterProvider is original  # type: ignore[attr-defined]
    views = provider._sdk_config.views
    assert len(views) == len(DEFAULT_VIEWS)
    assert 0.25 in views[0]._aggregation._boundaries
    provider.shutdown()
    with _setup.sdk_patches(Settings(enabled=False), None):
        assert sdk_configuration.MeterProvider is original  # type: ignore[attr-defined]


def test_slow_query_logs_rate_limited_per_fingerprint_and_suppressed_counted() -> None:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    from otel_dbperf._pipeline.slowlog import SUPPRESSED, SlowQueryLog

    exporter = InMemoryLogRecordExporter()
    logs = LoggerProvider()
    logs.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    now = [1000.0]
    settings = Settings(app_paths=(str(APP_CODE.parent),), slow_query_threshold_ms=50, slow_query_logs_per_minute=2)
    m = Metered(settings)
    sink = SlowQueryLog(settings, logs, clock=lambda: now[0])
    m.deriver._sinks = (sink,)
    try:
        for _ in range(5):
            queries.slow_query(m.engine, 0.06)
        queries.n_plus_one(m.engine, 1)  # fast: not logged (unless this machine made it take 50 ms: then slow)
        m.deriver.drain()
        (fast,) = [s for s in m.db_spans() if "authors" in str(s.attributes.get("db.statement"))]
        fast_logged = int(fast.attributes[A.QUERY_SLOW])  # its own fingerprint: its own budget
        assert (sink.emitted, sink.suppressed) == (2 + fast_logged, 3)
        now[0] += 61  # a new window: the next record reports what was suppressed
        queries.slow_query(m.engine, 0.06)
        m.deriver.drain()
        records = [r.log_record for r in exporter.get_finished_logs()]
        assert len(records) == 3 + fast_logged
        records = [r for r in records if "dbperf_sleep" in str(r.attributes.get(A.DB_QUERY_TEXT))]
        assert [r.attributes[SUPPRESSED] for r in records] == [0, 0, 3]
        assert all(r.severity_text == "WARN" and r.trace_id for r in records)
        assert records[0].body.startswith("slow query SELECT: ")
    finally:
        m.meters.shutdown()
        m.provider.shutdown()
