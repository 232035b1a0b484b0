"""Redis calls beside SQL queries: a Flask app with a Redis cache under opentelemetry-instrument +
gunicorn, real Redis, real SQLite and PostgreSQL; a Jinja2 template that lazily loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, base_env, get, marker_line, seeded_db_url, serve, server_output

from otel_dbperf import attributes as A
from otel_dbperf import metric_names as M

APP = "kv_app:app"
APP_FILE = str(APPS / "kv_app.py")
TEMPLATE = APPS / "templates" / "beyondsql_writers.html"


def template_line(path: Path, name: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if f"marker: {name}" in line:
            return i
    raise LookupError(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    from beyondsql_models import seed

    return seeded_db_url(request, tmp_path, "kv.db", seed)


def _system(span: dict[str, Any]) -> str:
    return str(span["attributes"].get("db.system.name") or span["attributes"].get("db.system") or "")


def _statement(span: dict[str, Any]) -> str:
    return str(span["attributes"].get("db.query.text") or span["attributes"].get("db.statement") or "")


def _root(spans: list[dict[str, Any]], route: str) -> dict[str, Any]:
    (root,) = [s for s in spans if s["kind"] == "SERVER" and s["attributes"].get("http.route") == route]
    return root


def test_redis_repeat_and_sql_n_plus_one_apart(receiver: Any, db_url: str, redis_db: int) -> None:
    env = base_env(receiver, APP_DB_URL=db_url, APP_REDIS_DB=str(redis_db), OTEL_METRICS_EXPORTER="otlp")
    env["OTEL_METRIC_EXPORT_INTERVAL"] = "500"
    with serve("gunicorn", APP, env, "-w", "1") as srv:
        status, body = get(srv["url"] + "/mixed")
        assert status == 200, body
        spans = receiver.wait_for(
            lambda s: any(x["attributes"].get("http.route") == "/mixed" and x["kind"] == "SERVER" for x in s)
        )

        def complete(points: list[dict[str, Any]]) -> bool:
            return any(
                p["name"] == M.REQUEST_DB_QUERIES.name and p["attributes"].get("http.route") == "/mixed" for p in points
            ) and any(
                p["name"] == M.DB_CLIENT_OPERATION_DURATION.name
                and p["attributes"].get("db.system.name") == "redis"
                and p["attributes"].get("db.operation.name") == "GET"
                and p["count"] >= 10
                for p in points
            )

        points = receiver.wait_for_metrics(complete, timeout=30)
        output = server_output(srv)
    assert "internal error" not in output, output
    root = _root(spans, "/mixed")
    a = root["attributes"]
    trace = [s for s in spans if s["trace_id"] == root["trace_id"]]

    # SQL: 1 SELECT of the writers + 10 lazy loads; the N+1 at the lazy load's line
    assert a[A.DB_QUERY_COUNT] == 11, a
    assert a[A.N_PLUS_ONE_DETECTED] is True
    assert a[A.N_PLUS_ONE_REPEAT_COUNT] == 10
    assert a[A.N_PLUS_ONE_QUERY_SUMMARY] == "SELECT beyondsql_titles"
    assert a[A.N_PLUS_ONE_CODE_LOCATION] == f"{APP_FILE}:{marker_line('kv_app.py', 'lazy')}"

    # Redis: 1 SET + 10 GETs, rolled up apart, with their own repeat verdict
    assert a[A.NOSQL_CALL_COUNT] == 11
    assert a["dbperf.nosql.redis.call_count"] == 11
    assert a["dbperf.nosql.redis.duration_ms"] > 0
    assert a[A.NOSQL_REPEAT_DETECTED] is True
    assert a[A.NOSQL_REPEAT_SYSTEM] == "redis"
    assert a[A.NOSQL_REPEAT_OPERATION] == "GET"
    assert a[A.NOSQL_REPEAT_COUNT] == 10
    assert a[A.NOSQL_REPEAT_SUGGESTION] == "MGET"
    assert a[A.NOSQL_REPEAT_CODE_LOCATION] == f"{APP_FILE}:{marker_line('kv_app.py', 'redis_get')}"

    redis_spans = [s for s in trace if _system(s) == "redis"]
    assert len(redis_spans) == 11
    for s in redis_spans:
        ra = s["attributes"]
        assert ra[A.QUERY_NOSQL] is True and A.N_PLUS_ONE not in ra and A.QUERY_DUPLICATE not in ra
        assert _statement(s) in ("GET ?", "SET ? ?")
        assert "hunter2" not in repr(ra) and "beyondsql:writer" not in repr(ra)
    gets = [s for s in redis_spans if _statement(s) == "GET ?"]
    assert {s["attributes"][A.CODE_LINE_NUMBER] for s in gets} == {marker_line("kv_app.py", "redis_get")}

    # metrics: Redis durations under their own db.system.name; the request's SQL only
    redis_points = [
        p
        for p in points
        if p["name"] == M.DB_CLIENT_OPERATION_DURATION.name and p["attributes"].get("db.system.name") == "redis"
    ]
    by_op: dict[str, int] = {}
    for p in redis_points:  # cumulative: the last point of each series
        by_op[p["attributes"].get("db.operation.name", "")] = p["count"]
    assert by_op == {"GET": 10, "SET": 1}, by_op
    queries = [
        p for p in points if p["name"] == M.REQUEST_DB_QUERIES.name and p["attributes"].get("http.route") == "/mixed"
    ]
    assert queries[-1]["count"] == 1 and queries[-1]["sum"] == 11
    slow = [
        p for p in points if p["name"] == M.DB_SLOW_QUERIES.name and p["attributes"].get("db.system.name") == "redis"
    ]
    assert slow == []
    n1 = [p for p in points if p["name"] == M.DB_N_PLUS_ONE.name]
    assert n1 and {p["attributes"].get("db.collection.name") for p in n1} == {"beyondsql_titles"}


def test_jinja2_template_line_is_the_n_plus_one_location(receiver: Any, db_url: str, redis_db: int) -> None:
    env = base_env(receiver, APP_DB_URL=db_url, APP_REDIS_DB=str(redis_db))
    with serve("gunicorn", APP, env, "-w", "1") as srv:
        status, body = get(srv["url"] + "/template")
        assert status == 200, body
        spans = receiver.wait_for(
            lambda s: any(x["attributes"].get("http.route") == "/template" and x["kind"] == "SERVER" for x in s)
        )
        output = server_output(srv)
    assert "internal error" not in output, output
    root = _root(spans, "/template")
    a = root["attributes"]
    where = f"{TEMPLATE}:{template_line(TEMPLATE, 'jinja_loop')}"
    view = f"{APP_FILE}:{marker_line('kv_app.py', 'render')}"
    assert a[A.DB_QUERY_COUNT] == 11
    assert a[A.N_PLUS_ONE_DETECTED] is True and a[A.N_PLUS_ONE_REPEAT_COUNT] == 10
    assert a[A.N_PLUS_ONE_CODE_LOCATION] == where
    assert a[A.N_PLUS_ONE_PYTHON_LOCATION] == view
    assert A.NOSQL_CALL_COUNT not in a  # no Redis call in this request
    lazy = [s for s in spans if s["trace_id"] == root["trace_id"] and "beyondsql_titles" in _statement(s)]
    assert len(lazy) >= 10
    for s in lazy:
        sa = s["attributes"]
        assert (sa[A.CODE_FILE_PATH], sa[A.CODE_LINE_NUMBER]) == (str(TEMPLATE), template_line(TEMPLATE, "jinja_loop"))
        assert sa[A.CODE_PYTHON_LOCATION] == view
        assert sa[A.CODE_FUNCTION_NAME] == "template"
