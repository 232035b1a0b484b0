"""FastAPI + async SQLAlchemy over asyncpg under opentelemetry-instrument + uvicorn, real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import APPS, base_env, get, marker_line, serve, server_output
from sqlalchemy import create_engine

from otel_dbperf import attributes as A

APP = "fastapi_app:app"
APP_FILE = str(APPS / "fastapi_app.py")
ORM = "opentelemetry.instrumentation.sqlalchemy"


def _statement(span: dict[str, Any]) -> str:
    a = span["attributes"]
    return str(a.get("db.query.text") or a.get("db.statement") or "")


@pytest.fixture
def seeded(pg_sync_url: str, pg_async_url: str) -> str:
    from models import seed

    engine = create_engine(pg_sync_url)
    seed(engine)
    engine.dispose()
    return pg_async_url


def _route_roots(spans: list[dict[str, Any]], route: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["kind"] == "SERVER" and s["attributes"].get("http.route") == route]


def _ns(span: dict[str, Any]) -> int:
    return int(span["end"]) - int(span["start"])


def test_async_location_n_plus_one_and_slow(receiver, seeded: str) -> None:  # type: ignore[no-untyped-def]
    env = base_env(receiver, APP_DB_URL=seeded, DBPERF_STACKTRACE_THRESHOLD_MS="200")
    with serve("uvicorn", APP, env) as srv:
        for path in ("/author/2", "/authors", "/slow"):
            assert get(srv["url"] + path)[0] == 200, path
        routes = {"/author/{author_id}", "/authors", "/slow"}  # not a count: the readiness /ping may be several
        spans = receiver.wait_for(
            lambda s: routes <= {x["attributes"].get("http.route") for x in s if x["kind"] == "SERVER"}
        )
        output = server_output(srv)
    assert "internal error" not in output, output
    orm = [s for s in spans if s["scope"] == ORM and _statement(s)]

    (point_root,) = _route_roots(spans, "/author/{author_id}")
    point = [s for s in orm if s["trace_id"] == point_root["trace_id"]]
    assert point
    assert {(s["attributes"][A.CODE_FILE_PATH], s["attributes"][A.CODE_LINE_NUMBER]) for s in point} == {
        (APP_FILE, marker_line("fastapi_app.py", "async_point"))
    }
    # the driver-level asyncpg span of the same query gets the same application line
    statements = {_statement(s) for s in point}
    driver = [s for s in spans if s["trace_id"] == point_root["trace_id"] and "asyncpg" in s["scope"]]
    driver = [s for s in driver if _statement(s) in statements]
    assert driver and all(s["attributes"][A.CODE_FILE_PATH] == APP_FILE for s in driver)

    (n1_root,) = _route_roots(spans, "/authors")
    a = n1_root["attributes"]
    assert a[A.N_PLUS_ONE_DETECTED] is True
    assert a[A.N_PLUS_ONE_REPEAT_COUNT] == 8
    assert a[A.N_PLUS_ONE_CODE_LOCATION] == f"{APP_FILE}:{marker_line('fastapi_app.py', 'async_n1')}"
    assert a[A.DB_QUERY_COUNT] == 9

    (slow_root,) = _route_roots(spans, "/slow")
    (slow,) = [s for s in orm if s["trace_id"] == slow_root["trace_id"] and "pg_sleep" in _statement(s)]
    assert slow["attributes"][A.QUERY_SLOW] is True
    assert any(e["name"] == A.EVENT_SLOW_QUERY for e in slow["events"])
    stack = slow["attributes"][A.CODE_STACKTRACE]
    assert f'"{APP_FILE}", line {marker_line("fastapi_app.py", "async_slow")}' in stack
    # the others are fast, but a loaded machine may stretch one past the default 100 ms: each as its duration says
    assert all(s["attributes"][A.QUERY_SLOW] is (_ns(s) >= 100_000_000) for s in orm)
    flagged = [s for s in orm if s["trace_id"] == slow_root["trace_id"] and s["attributes"][A.QUERY_SLOW]]
    assert slow_root["attributes"][A.DB_SLOW_QUERY_COUNT] == len(flagged) >= 1


def test_hundred_concurrent_requests_never_mix(receiver, seeded: str) -> None:  # type: ignore[no-untyped-def]
    env = base_env(receiver, APP_DB_URL=seeded)
    with serve("uvicorn", APP, env) as srv:
        ks = [i % 9 + 1 for i in range(100)]

        async def main() -> list[int]:
            loop = asyncio.get_running_loop()

            def fetch(k: int) -> int:
                return get(f"{srv['url']}/n/{k}", timeout=60)[0]

            return await asyncio.gather(*(loop.run_in_executor(None, fetch, k) for k in ks))

        import concurrent.futures

        asyncio.get_event_loop_policy()
        with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
            loop = asyncio.new_event_loop()
            loop.set_default_executor(pool)
            statuses = loop.run_until_complete(main())
            loop.close()
        assert statuses == [200] * 100, server_output(srv)[-3000:]
        spans = receiver.wait_for(lambda s: len(_route_roots(s, "/n/{k}")) >= 100, timeout=60)
    roots = _route_roots(spans, "/n/{k}")
    assert len(roots) == 100
    assert sorted(int(str(r["attributes"]["url.path"]).rsplit("/", 1)[1]) for r in roots) == sorted(ks)
    for r in roots:
        k = int(str(r["attributes"]["url.path"]).rsplit("/", 1)[1])
        assert r["attributes"][A.DB_QUERY_COUNT] == k, r["attributes"]
        own = [s for s in spans if s["trace_id"] == r["trace_id"] and s["scope"] == ORM and _statement(s)]
        assert len(own) == k
