"""Beyond SQL requests, in process and in small scripts: connection spans, nested driver spans
outside any request, key-value calls in a request, the report's routes and repeated calls."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, BIN, marker_line
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.trace import SpanKind
from support.pipeline import make

from otel_dbperf import _nosql
from otel_dbperf import attributes as A
from otel_dbperf._sql import analyze
from otel_dbperf.report.cli import EXIT_OK, main


def line_in(path: str, name: str) -> int:
    for i, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# line: {name}"):
            return i
    raise LookupError(name)


@pytest.mark.parametrize(
    ("statement", "system", "sanitized", "operation"),
    [
        ("GET ?", "redis", "GET ?", "GET"),
        ("GET user:42:secret", "redis", "GET ?", "GET"),
        ("set session:abc hunter2 EX 60", "redis", "SET ? ? ? ?", "SET"),
        ("SET ? ?\nGET ?", "redis", "SET ? ?\nGET ?", "SET"),
        ("CONFIG SET requirepass hunter2", "redis", "CONFIG SET ? ?", "CONFIG SET"),
        ("EVAL 'return redis.call(\"get\", KEYS[1])' 1 k", "redis", "EVAL ? ? ? ? ?", "EVAL"),
        ("'hunter2' x", "valkey", "? ?", ""),
        ('find {"email": "a@example.com"}', "mongodb", "find ?", "FIND"),
        ("get token:hunter2", "memcached", "get ?", "GET"),
    ],
)
def test_commands_keep_the_command_and_drop_the_arguments(
    statement: str, system: str, sanitized: str, operation: str
) -> None:
    analysis = analyze(statement, 4096, system)
    assert analysis.sanitized == sanitized
    assert analysis.operation == operation
    assert "hunter2" not in repr(analysis) and "example.com" not in repr(analysis)
    assert analysis.fingerprint == analyze(sanitized, 4096, system).fingerprint


def test_same_command_same_fingerprint_whatever_the_keys() -> None:
    assert analyze("GET a", 4096, "redis").fingerprint == analyze("GET b", 4096, "redis").fingerprint
    assert analyze("GET a", 4096, "redis").fingerprint != analyze("MGET a b", 4096, "redis").fingerprint
    assert analyze("GET a", 4096, "redis").fingerprint != analyze("GET a", 4096, "memcached").fingerprint


@pytest.mark.parametrize(
    ("system", "operation", "expected"),
    [
        ("redis", "GET", "MGET"),
        ("redis", "HGET", "HMGET"),
        ("redis", "XADD", "a pipeline"),
        ("memcached", "GET", "get_multi"),
    ],
)
def test_suggestions(system: str, operation: str, expected: str) -> None:
    assert _nosql.suggestion(system, operation) == expected


def test_connection_spans_are_no_query(tmp_path: Path) -> None:
    """The SQLAlchemy ``connect`` span: no slow flag and no slow event even past the threshold
    (connections are no query: not counted, not logged, not in the metrics, not flagged)."""
    t = make(tmp_path, slow_query_threshold_ms=0)
    t.engine.dispose()  # the next query connects again
    with t.tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER), t.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1").all()
    spans = t.spans()
    (connect,) = [s for s in spans if s.name == "connect"]
    assert A.QUERY_SLOW not in connect.attributes
    assert not [e for e in connect.events if e.name == A.EVENT_SLOW_QUERY]
    (query,) = [s for s in spans if s.attributes.get("db.statement") == "SELECT ?"]
    assert query.attributes[A.QUERY_SLOW] is True  # threshold 0: every query is slow
    (root,) = [s for s in spans if s.name == "GET /x"]
    assert root.attributes[A.DB_QUERY_COUNT] == 1 and root.attributes[A.DB_SLOW_QUERY_COUNT] == 1
    t.provider.shutdown()


@pytest.fixture(params=[True, False], ids=["code_location", "no_code_location"])
def redis_traced(request: pytest.FixtureRequest, tmp_path: Path, redis_db: int) -> Any:
    import redis

    t = make(tmp_path, code_location=request.param)
    instrumentor = RedisInstrumentor()
    instrumentor.instrument(tracer_provider=t.provider)
    client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    yield t, client
    instrumentor.uninstrument()
    t.provider.shutdown()


def test_redis_calls_in_a_request_are_rolled_up_apart(redis_traced: Any) -> None:
    from app_code import kv, queries

    t, client = redis_traced
    with t.tracer.start_as_current_span("GET /mixed", kind=SpanKind.SERVER):
        queries.n_plus_one(t.engine, 6)
        kv.cache_gets(client, 6)
        client.get("beyondsql:framework")  # no application frame: the framework's own, not rolled up
    spans = t.spans()
    (root,) = [s for s in spans if s.name == "GET /mixed"]
    a = root.attributes
    assert a[A.DB_QUERY_COUNT] == 6 and a[A.N_PLUS_ONE_REPEAT_COUNT] == 6
    gets = [s for s in spans if s.name == "GET"]
    assert len(gets) == 7 and all(s.attributes[A.QUERY_NOSQL] is True for s in gets)
    assert not any(A.N_PLUS_ONE in s.attributes for s in gets)
    assert a[A.NOSQL_REPEAT_DETECTED] is True and a[A.NOSQL_REPEAT_SUGGESTION] == "MGET"
    assert a[A.NOSQL_DURATION_MS] > 0
    # the slow ones as their flags say (none but on a loaded machine; the framework's call is never slow)
    assert a[A.NOSQL_SLOW_CALL_COUNT] == sum(bool(s.attributes.get(A.QUERY_SLOW)) for s in gets)
    if t.processor.settings.code_location:
        assert a[A.NOSQL_CALL_COUNT] == 6 and a["dbperf.nosql.redis.call_count"] == 6
        assert a[A.NOSQL_REPEAT_CODE_LOCATION] == f"{kv.__file__}:{line_in(kv.__file__, 'cache_get')}"
        (framework,) = [s for s in gets if s.attributes.get(A.QUERY_FRAMEWORK)]
        assert A.CODE_FILE_PATH not in framework.attributes
    else:  # no frame walk, so no telling the framework's calls apart: all are rolled up
        assert a[A.NOSQL_CALL_COUNT] == 7 and a[A.NOSQL_REPEAT_COUNT] == 7
        assert not [s for s in gets if s.attributes.get(A.QUERY_FRAMEWORK)]


def _file_spans(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(scope name, attributes) of every span in an otlp_json_file output."""
    out = []
    for line in path.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    attrs = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
                    out.append((ss["scope"]["name"], attrs))
    return out


def _report(path: Path) -> dict[str, Any]:
    out = io.StringIO()
    assert main(["report", str(path), "--json"], out=out) == EXIT_OK
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


def test_nested_driver_span_outside_any_request_counts_once(pg_sync_url: str, tmp_path: Path) -> None:
    """At import time (no request), the SQLAlchemy span and the psycopg2 span of the same statement:
    the driver span is marked nested, and the report counts the statement once."""
    url = pg_sync_url.replace("+psycopg:", "+psycopg2:")
    out = tmp_path / "spans.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_"))}
    env.update(OTEL_TRACES_EXPORTER="otlp_json_file", DBPERF_FILE_PATH=str(out), OTEL_METRICS_EXPORTER="none")
    env.update(OTEL_LOGS_EXPORTER="none", OTEL_SERVICE_NAME="import-time")
    cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "import_time_app.py", url]
    proc = subprocess.run(cmd, cwd=APPS, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    spans = [
        (scope, a) for scope, a in _file_spans(out) if a.get("db.query.text", a.get("db.statement")) == "SELECT ? + ?"
    ]
    by_scope = dict(spans)
    assert len(spans) == 2 and set(by_scope) == {
        "opentelemetry.instrumentation.sqlalchemy",
        "opentelemetry.instrumentation.psycopg2",
    }, spans
    orm = by_scope["opentelemetry.instrumentation.sqlalchemy"]
    driver = by_scope["opentelemetry.instrumentation.psycopg2"]
    assert driver[A.QUERY_NESTED] is True and A.QUERY_NESTED not in orm
    assert int(orm[A.CODE_LINE_NUMBER]) == marker_line("import_time_app.py", "import_query")
    (query,) = [q for q in _report(out)["top_queries"] if q["statement"] == "SELECT ? + ?"]
    assert query["count"] == 1


def test_a_forked_child_gets_fresh_metric_export_locks() -> None:
    """A periodic reader's export lock held by the parent's export thread at the fork (a Celery
    prefork pool starting its child while the master exports) must not stay held in the child:
    the child's metrics would never be exported."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    from otel_dbperf import _prefork

    with open(os.devnull, "w") as sink:
        reader = PeriodicExportingMetricReader(ConsoleMetricExporter(out=sink), export_interval_millis=3_600_000)
        provider = MeterProvider(metric_readers=[reader])
        hooks = _prefork.ForkHooks(provider, None)
        read, write = os.pipe()
        with reader._export_lock:  # as the parent's export thread holds it while it exports
            pid = os.fork()
            if pid == 0:  # the child: report whether the lock is free, and leave at once
                os.write(write, b"free" if not reader._export_lock.locked() else b"held")
                os._exit(0)
        os.close(write)
        answer = os.read(read, 4)
        os.close(read)
        os.waitpid(pid, 0)
        provider.shutdown()
    assert hooks is not None and answer == b"free"
