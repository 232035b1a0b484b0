"""Connection pools end to end, real PostgreSQL, OTLP: under opentelemetry-instrument, uvicorn's WSGI
threads and a forked gunicorn gthread worker's threads.

8 concurrent requests share a pool of 2 connections, each holding one ~300 ms: the pool metrics
show requests pending and one wait-time point per checkout; the requests that waited carry their
wait, and the profiler sums them per route. A pool timeout, a statement timeout and a transaction
that stays open are classified.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import base_env, free_port, get, get_json, serve, server_output

from otel_dbperf import attributes as A
from otel_dbperf import metric_names as M

APP = "pool_app:app"
POOL = "db.client.connection.pool.name"
HOLDS = 8


def _ns(span: dict[str, Any]) -> int:
    return int(span["end"]) - int(span["start"])


def _latest(points: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """The last point of metric ``name`` per pool (and state)."""
    latest: dict[str, dict[str, Any]] = {}
    for p in points:
        if p["name"] == name:
            latest[repr(sorted(p["attributes"].items()))] = p
    return latest


SERVERS = {
    "uvicorn-wsgi": ("uvicorn", "--interface", "wsgi"),  # a pool of 10 threads, one process
    "gunicorn-gthread": ("gunicorn", "-w", "1", "-k", "gthread", "--threads", "10"),  # a forked worker's threads
}


@pytest.mark.parametrize("server", SERVERS)
def test_pool_waits_timeouts_and_transactions_under_server_threads(
    receiver: Any, pg_sync_url: str, server: str
) -> None:
    env = base_env(
        receiver,
        APP_DB_URL=pg_sync_url,
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_METRIC_EXPORT_INTERVAL="50",
        DBPERF_LONG_TRANSACTION_MS="200",
        DBPERF_PROFILER_ADDR=f"127.0.0.1:{(port := free_port())}",
    )
    kind, *args = SERVERS[server]
    with serve(kind, APP, env, *args) as srv:
        with ThreadPoolExecutor(HOLDS) as pool:
            statuses = list(pool.map(lambda _: get(srv["url"] + "/hold")[0], range(HOLDS)))
        assert statuses == [200] * HOLDS
        assert get(srv["url"] + "/idle_tx")[0] == 200
        assert get(srv["url"] + "/statement_timeout")[0] == 504
        assert get(srv["url"] + "/exhaust")[0] == 503
        checkouts = HOLDS + 2  # each /hold, /idle_tx and /statement_timeout request: one checkout of "main"

        def complete(points: list[dict[str, Any]]) -> bool:
            waits = _latest(points, M.DB_CLIENT_CONNECTION_WAIT_TIME.name)
            errors = [p for p in _latest(points, M.DB_ERRORS.name).values() if p["value"]]
            return (
                sum(p["count"] for p in waits.values() if p["attributes"][POOL] == "main") >= checkouts
                and len(errors) >= 2
            )

        try:
            points = receiver.wait_for_metrics(complete, timeout=30)
        except AssertionError:
            got = receiver.metrics
            waits = _latest(got, M.DB_CLIENT_CONNECTION_WAIT_TIME.name)
            errors = _latest(got, M.DB_ERRORS.name)
            raise AssertionError(
                f"waits {[(p['attributes'], p['count']) for p in waits.values()]}, "
                f"errors {[(p['attributes'], p['value']) for p in errors.values()]}; "
                f"processes that exported metrics: {sorted({p['resource'].get('service.instance.id') for p in got})}"
                f"\n{server_output(srv)}"
            ) from None
        spans = receiver.wait_for(lambda s: sum(x["name"] == "GET /hold" for x in s) == HOLDS)
        spans = receiver.wait_for(lambda s: any(x["name"] == "GET /exhaust" for x in s))
        deadline = time.monotonic() + 30  # a hang guard: the profiler's history is fed by the derivation thread
        while len(routes := get_json(f"http://127.0.0.1:{port}/profiler/stats")["data"]["requests_by_route"]) < 5:
            assert time.monotonic() < deadline, routes
            time.sleep(0.1)
        output = server_output(srv)

    # the pool metrics: pending requests seen, one wait-time point per checkout
    pending = [p["value"] for p in points if p["name"] == M.DB_CLIENT_CONNECTION_PENDING_REQUESTS.name
               and p["attributes"] == {POOL: "main"}]  # fmt: skip
    assert max(pending) >= 1, output
    waits = _latest(points, M.DB_CLIENT_CONNECTION_WAIT_TIME.name)
    main_waits = [p for p in waits.values() if p["attributes"] == {POOL: "main"}]
    assert [p["count"] for p in main_waits] == [checkouts], output
    assert main_waits[0]["sum"] >= 0.5  # 6 of the 8 waited 300 to 900 ms: ~3.6 s in all
    (limit,) = [p["value"] for p in _latest(points, M.DB_CLIENT_CONNECTION_MAX.name).values()
                if p["attributes"] == {POOL: "main"}]  # fmt: skip
    assert limit == 2
    used = [p["value"] for p in points if p["name"] == M.DB_CLIENT_CONNECTION_COUNT.name
            and p["attributes"] == {POOL: "main", "db.client.connection.state": "used"}]  # fmt: skip
    assert max(used) == 2
    assert not [p for p in points if p["name"] == "db.client.connections.usage"]  # contrib's: dropped by a view

    # the requests that waited carry their wait: within the request's time outside its one query, and
    # within the span contrib's instrumentation opens around Engine.connect (the checkout, and
    # SQLAlchemy's own work around it, which a loaded machine stretches: no bound on the gap)
    holds = [s for s in spans if s["name"] == "GET /hold"]
    queries = [s for s in spans if s["scope"] == "opentelemetry.instrumentation.sqlalchemy"
               and "pg_sleep(?)" in s["attributes"].get("db.query.text", "")]  # fmt: skip
    waited = []
    for root in holds:
        wait_ms = root["attributes"][A.DB_POOL_WAIT_MS]
        assert root["attributes"][A.DB_CONNECTIONS_USED] == 1
        (query,) = [q for q in queries if q["trace_id"] == root["trace_id"]]
        (connect,) = [s for s in spans if s["trace_id"] == root["trace_id"] and s["name"] == "connect"]
        outside_ms = (_ns(root) - _ns(query)) / 1e6  # the request's time outside its one query
        connect_ms = _ns(connect) / 1e6
        assert 0 < wait_ms <= min(outside_ms, connect_ms), (wait_ms, outside_ms, connect_ms)
        if wait_ms >= 50:
            waited.append(wait_ms)
    assert len(waited) >= 4, [r["attributes"][A.DB_POOL_WAIT_MS] for r in holds]  # 6 expected
    assert max(waited) >= 150
    slow = [e for r in holds for e in r["events"] if e["name"] == A.EVENT_POOL_WAIT]
    assert slow and all(e["attributes"][POOL] == "main" and e["attributes"][A.POOL_SIZE] == 2 for e in slow)

    # the profiler shows the same waits and timeouts per route
    hold_waits = [r["attributes"][A.DB_POOL_WAIT_MS] for r in holds]
    row = routes["/hold"]
    assert (row["requests"], row["db_queries"], row["pool_timeouts"]) == (HOLDS, HOLDS, 0), row
    assert abs(row["pool_wait_ms"] - sum(hold_waits)) < 0.01 and row["max_pool_wait_ms"] == round(max(hold_waits), 3)
    assert row["pool_waited_requests"] == HOLDS  # every one asked the pool for a connection
    assert routes["/exhaust"]["pool_timeouts"] == 1 and routes["/exhaust"]["requests"] == 1
    assert sorted(routes) == ["/exhaust", "/hold", "/idle_tx", "/ping", "/statement_timeout"]  # /ping: serve's probe

    # the pool timeout: classified on the connect span, counted on the request and in the metrics
    (exhaust,) = [s for s in spans if s["name"] == "GET /exhaust"]
    assert exhaust["attributes"][A.DB_POOL_TIMEOUTS] == 1
    connects = [s for s in spans if s["trace_id"] == exhaust["trace_id"] and s["name"] == "connect"]
    assert [s["attributes"].get(A.DB_ERROR_KIND) for s in connects].count("pool_timeout") == 1
    timeouts = _latest(points, M.DB_CLIENT_CONNECTION_TIMEOUTS.name)
    assert sorted((p["attributes"][POOL], p["value"]) for p in timeouts.values()) == [("main", 0), ("tiny", 1)]
    errors = {p["attributes"][A.DB_ERROR_KIND]: p["value"] for p in _latest(points, M.DB_ERRORS.name).values()}
    assert errors == {"pool_timeout": 1, "statement_timeout": 1, "lock_timeout": 0, "deadlock": 0, "serialization": 0}

    # the statement timeout, and the transaction the app kept open while it slept
    (canceled,) = [s for s in spans if s["name"] == "GET /statement_timeout"]
    assert canceled["attributes"][A.DB_STATEMENT_TIMEOUTS] == 1
    (idle,) = [s for s in spans if s["name"] == "GET /idle_tx"]
    assert idle["attributes"][A.DB_TRANSACTION_COUNT] == 1
    assert 300 <= idle["attributes"][A.DB_IDLE_IN_TRANSACTION_MS] <= idle["attributes"][A.DB_TRANSACTION_MAX_MS]
    assert idle["attributes"][A.DB_LONG_TRANSACTION_COUNT] == 1
    assert [e["name"] for e in idle["events"]].count(A.EVENT_LONG_TRANSACTION) == 1
