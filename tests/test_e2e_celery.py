"""Celery: a real worker (prefork and solo pools) under opentelemetry-instrument, a real Redis
broker and result backend, real SQLite and PostgreSQL. A task is rolled up like a request, named by
its task name; the worker's own broker and result-backend traffic is never counted in it."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import base_env, free_port, get, marker_line, seeded_db_url, statement, system
from support.celery_worker import APP_FILE, purge, worker
from support.celery_worker import client as celery_client

from otel_dbperf import attributes as A
from otel_dbperf import metric_names as M
from otel_dbperf.report.cli import EXIT_OK, main


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    from beyondsql_models import seed

    return seeded_db_url(request, tmp_path, "celery.db", seed)


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_task_rollup_named_by_task_without_broker_traffic(
    receiver: Any, db_url: str, redis_db: int, pool: str, tmp_path: Path
) -> None:
    purge(redis_db)
    env = base_env(receiver, APP_DB_URL=db_url, APP_REDIS_DB=str(redis_db), OTEL_METRICS_EXPORTER="otlp")
    env["OTEL_METRIC_EXPORT_INTERVAL"] = "500"
    file = tmp_path / "spans.jsonl"  # for the report, beside the OTLP receiver
    env.update(OTEL_TRACES_EXPORTER="otlp,otlp_json_file", DBPERF_FILE_PATH=str(file))
    profiler = free_port()
    if pool == "solo":  # the worker's own process serves the profiler
        env["DBPERF_PROFILER_ADDR"] = f"127.0.0.1:{profiler}"
    client = celery_client(redis_db)
    with worker(env, pool) as w:
        ran = client.send_task("beyondsql.writers_report").get(timeout=60)
        hits = client.send_task("beyondsql.warm_cache", args=(7,)).get(timeout=60)
        assert hits == 0

        def tasks_done(spans: list[dict[str, Any]]) -> bool:
            names = {s["attributes"].get("celery.task_name") for s in spans if s["kind"] == "CONSUMER"}
            return {"beyondsql.writers_report", "beyondsql.warm_cache"} <= names

        spans = receiver.wait_for(tasks_done, timeout=60)

        def metrics_done(points: list[dict[str, Any]]) -> bool:
            return any(
                p["name"] == M.REQUEST_DB_QUERIES.name
                and p["attributes"].get("celery.task_name") == "beyondsql.writers_report"
                for p in points
            )

        try:
            points = receiver.wait_for_metrics(metrics_done, timeout=60)
        except AssertionError as exc:
            w["log"].flush()
            raise AssertionError(f"{exc}\nworker output:\n{Path(w['log'].name).read_text()}") from None
        (task,) = [s for s in spans if s["attributes"].get("celery.task_name") == "beyondsql.writers_report"]

        def result_stored(spans: list[dict[str, Any]]) -> bool:  # exported in a later batch than the task's
            return any(s["trace_id"] == task["trace_id"] and "PUBLISH" in statement(s) for s in spans)

        spans = receiver.wait_for(result_stored)
        history: list[dict[str, Any]] = []
        if pool == "solo":
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # the history gets the route when the task's span comes
                status, body = get(f"http://127.0.0.1:{profiler}/profiler/slow-queries?threshold=0&limit=100")
                assert status == 200, body
                history = json.loads(body)["data"]["queries"]
                if sum(q["route"] == "beyondsql.writers_report" for q in history) >= 11:
                    break
                time.sleep(0.2)
    output = w["output"]
    assert "internal error" not in output, output

    (task,) = [s for s in spans if s["attributes"].get("celery.task_name") == "beyondsql.writers_report"]
    a = task["attributes"]
    # counts equal the SQL the task ran: no broker or result-backend command among them
    assert ran["statements"] == 11 and ran["books"] == 20
    assert a[A.DB_QUERY_COUNT] == ran["statements"], a
    assert a[A.N_PLUS_ONE_DETECTED] is True
    assert a[A.N_PLUS_ONE_REPEAT_COUNT] == 10
    assert a[A.N_PLUS_ONE_CODE_LOCATION] == f"{APP_FILE}:{marker_line('celery_tasks.py', 'task_lazy')}"
    assert A.NOSQL_CALL_COUNT not in a  # the worker's own Redis traffic is not the task's
    in_task = [s for s in spans if s["trace_id"] == task["trace_id"] and system(s) == "redis"]
    assert in_task, "the result backend writes inside the task span"
    for s in in_task:  # the result backend's SETEX + PUBLISH run inside the task's span
        assert s["attributes"][A.QUERY_FRAMEWORK] is True and s["attributes"][A.QUERY_NOSQL] is True
    broker = [s for s in spans if system(s) == "redis" and s["trace_id"] != task["trace_id"]]
    assert broker, "the worker's broker traffic is traced (and marked)"
    loose = [s for s in broker if not s["parent_span_id"]]
    assert loose and all(s["attributes"].get(A.QUERY_FRAMEWORK) is True for s in loose)
    # a worker's blocking BRPOP lasts up to its timeout: framework calls are never flagged slow, never
    # carry our events and are never rolled up (redis-py's own `exception` event is allowed: a Redis
    # that has not seen Celery's scripts answers the first EVALSHA with NOSCRIPT, and redis-py retries)
    framework = [s for s in spans if s["attributes"].get(A.QUERY_FRAMEWORK)]
    ours = {A.EVENT_SLOW_QUERY, A.EVENT_EXPLAIN, A.EVENT_POOL_WAIT, A.EVENT_LONG_TRANSACTION}
    assert not [s for s in framework if A.QUERY_SLOW in s["attributes"]]
    assert not [s for s in framework if {e["name"] for e in s["events"]} & ours]

    # the task of the application's own Redis calls: its repeat, at its line
    (warm,) = [s for s in spans if s["attributes"].get("celery.task_name") == "beyondsql.warm_cache"]
    b = warm["attributes"]
    assert b[A.DB_QUERY_COUNT] == 0
    assert b[A.NOSQL_CALL_COUNT] == 7 and b["dbperf.nosql.redis.call_count"] == 7
    assert b[A.NOSQL_REPEAT_DETECTED] is True and b[A.NOSQL_REPEAT_OPERATION] == "GET"
    assert b[A.NOSQL_REPEAT_CODE_LOCATION] == f"{APP_FILE}:{marker_line('celery_tasks.py', 'task_get')}"

    # the profiler and the report name the task as the route; no broker command among the queries
    if pool == "solo":
        routes = [q["route"] for q in history]
        assert routes.count("beyondsql.writers_report") == 11, history
        assert not [q for q in history if "GET" in q["statement"] or "PUBLISH" in q["statement"]], history
    out = io.StringIO()
    assert main(["report", str(file), "--json"], out=out) == EXIT_OK
    report = json.loads(out.getvalue())
    (n1,) = report["n_plus_one"]
    assert n1["route"] == "beyondsql.writers_report" and n1["max_repeat_count"] == 10
    assert {r["route"] for r in report["routes"]} == {"beyondsql.writers_report", "beyondsql.warm_cache"}
    assert sum(q["count"] for q in report["top_queries"]) == 11, report["top_queries"]
    text = io.StringIO()
    assert main(["report", str(file)], out=text) == EXIT_OK
    assert "beyondsql.warm_cache: redis GET repeated up to 7x in 1 request(s) at " in text.getvalue()
    assert ": use MGET" in text.getvalue()
    (repeat,) = report["repeated_calls"]
    assert (repeat["route"], repeat["system"], repeat["operation"], repeat["suggestion"]) == (
        "beyondsql.warm_cache",
        "redis",
        "GET",
        "MGET",
    )

    # metrics carry the task name
    queries = [
        p
        for p in points
        if p["name"] == M.REQUEST_DB_QUERIES.name
        and p["attributes"].get("celery.task_name") == "beyondsql.writers_report"
    ]
    assert queries[-1]["sum"] == 11 and queries[-1]["count"] == 1
    n1 = [p for p in points if p["name"] == M.DB_N_PLUS_ONE.name]
    assert {p["attributes"].get("celery.task_name") for p in n1} == {"beyondsql.writers_report"}
