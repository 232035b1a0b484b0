"""The asyncio findings end to end: a FastAPI + async SQLAlchemy (asyncpg, PostgreSQL) app under
opentelemetry-instrument + uvicorn (seed 004): a blocking call that stalls the event loop, and
independent queries awaited one after another."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import APPS, base_env, get, marker_line, serve, server_output
from sqlalchemy import create_engine

from otel_dbperf import attributes as A
from otel_dbperf import metric_names as M

APP_FILE = str(APPS / "findings_async_app.py")
ROUTES = {"/block", "/awaits", "/dashboard", "/chain"}


@pytest.fixture
def seeded(pg_sync_url: str, pg_async_url: str) -> str:
    from models import seed

    engine = create_engine(pg_sync_url)
    seed(engine)
    engine.dispose()
    return pg_async_url


def _roots(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["attributes"].get("http.route"): s for s in spans if s["kind"] == "SERVER"}


def test_blocked_event_loop_and_sequential_queries(receiver, seeded: str) -> None:  # type: ignore[no-untyped-def]
    env = base_env(
        receiver,
        APP_DB_URL=seeded,
        DBPERF_EVENT_LOOP_BLOCKED_MS="150",
        DBPERF_SEQUENTIAL_QUERIES_THRESHOLD="3",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_METRIC_EXPORT_INTERVAL="500",
    )
    with serve("uvicorn", "findings_async_app:app", env) as srv:
        for path in ("/block", "/awaits", "/dashboard", "/chain"):
            status, body = get(srv["url"] + path)
            assert status == 200, (path, body)
        spans = receiver.wait_for(lambda s: set(_roots(s)) >= ROUTES)
        expected = {("/block", "event_loop_blocked"), ("/dashboard", "sequential_queries")}
        points = receiver.wait_for_metrics(
            lambda p: any(x["name"] == M.EVENT_LOOP_BLOCKED.name for x in p) and expected <= _findings(p), timeout=30
        )
        output = server_output(srv)
    assert "internal error" not in output, output
    roots = _roots(spans)

    # /block held the loop for 0.5 s: an event with the line that held it, the request's totals
    block = roots["/block"]
    (event,) = [e for e in block["events"] if e["name"] == A.EVENT_EVENT_LOOP_BLOCKED]
    line = marker_line("findings_async_app.py", "loop_block")
    assert (event["attributes"][A.CODE_FILE_PATH], event["attributes"][A.CODE_LINE_NUMBER]) == (APP_FILE, line)
    assert event["attributes"][A.CODE_FUNCTION_NAME] == "block"
    assert event["attributes"][A.EVENT_DURATION_MS] >= 150
    assert event["attributes"][A.EVENT_THRESHOLD_MS] == 150
    a = block["attributes"]
    assert a[A.REQUEST_EVENT_LOOP_BLOCKED] is True
    assert a[A.REQUEST_EVENT_LOOP_BLOCKED_COUNT] == 1 and a[A.REQUEST_EVENT_LOOP_BLOCKED_MS] >= 150
    assert a[A.REQUEST_EVENT_LOOP_CODE_LOCATION] == f"{APP_FILE}:{line}"
    # /awaits was as long, awaiting: no stall of the app's code (a loaded machine may stall the loop
    # elsewhere, never in this app's file)
    for e in roots["/awaits"]["events"]:
        assert e["attributes"].get(A.CODE_FILE_PATH) != APP_FILE, e
    # no CPU-bound verdict under asyncio (the loop thread's CPU time is every task's)
    assert A.REQUEST_CPU_BOUND not in a

    # /dashboard: three SELECTs of their own awaited in turn; /chain's take a value from the previous one
    d = roots["/dashboard"]["attributes"]
    assert d[A.REQUEST_SEQUENTIAL_DETECTED] is True
    assert d[A.REQUEST_SEQUENTIAL_COUNT] == 3
    assert d[A.REQUEST_SEQUENTIAL_CODE_LOCATION] == f"{APP_FILE}:{marker_line('findings_async_app.py', 'seq')}"
    assert 0 < d[A.REQUEST_SEQUENTIAL_SAVING_MS] < d[A.REQUEST_SEQUENTIAL_DURATION_MS]
    assert "asyncio.gather" in d[A.REQUEST_SEQUENTIAL_SUGGESTION]
    assert roots["/chain"]["attributes"][A.REQUEST_SEQUENTIAL_DETECTED] is False

    # the metrics: the stall's length, and one finding per kind and route
    stalls = [p for p in points if p["name"] == M.EVENT_LOOP_BLOCKED.name]
    assert sum(p["count"] for p in stalls) >= 1 and max(p["sum"] for p in stalls) >= 0.15
    findings = _findings(points)
    assert ("/chain", "sequential_queries") not in findings


def _findings(points: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(route, finding) of every dbperf.request.findings series that counted a request (every kind has
    a series on every route, 0 until found)."""
    return {
        (p["attributes"]["http.route"], p["attributes"]["dbperf.finding"])
        for p in points
        if p["name"] == M.REQUEST_FINDINGS.name and p["value"] > 0
    }
