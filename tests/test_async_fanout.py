"""asyncpg and async SQLAlchemy (asyncpg dialect) on the real PostgreSQL, in a FastAPI app run as a
script under opentelemetry-instrument (``uvicorn.run`` under ``__main__``: the script's module frame
lies below the event loop). Issue 24, items 1-3:

- queries whose coroutines go straight to ``gather``/``TaskGroup``/``create_task`` have no
  application frame on their task's stack: their location is the line of the application frame
  that awaits them, one await-chain up, never the line that started the event loop;
- the asyncpg pool's reset on release (``SELECT pg_advisory_unlock_all(); CLOSE ALL; ...``) is
  connection housekeeping, not one of the request's queries;
- an asyncpg cursor read row by row (one span per fetch) is one query, never an N+1.

One server for the module; each test reads the spans of its routes.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import APPS, BIN, TESTS, base_env, free_port, get, marker_line, stop_group
from otlp_receiver import Receiver

from otel_dbperf import attributes as A
from otel_dbperf.report.cli import EXIT_OK, main

APP = "async_fanout_app.py"
APP_FILE = str(APPS / APP)
FANOUT = 6
ROWS = 200
RESET = "pg_advisory_unlock_all()"
CURSOR_FETCH = "dbperf.query.cursor_fetch"  # A.QUERY_CURSOR_FETCH
ROUTES = (
    "/gather", "/helper", "/nested_gather", "/taskgroup", "/later", "/wait_for", "/shield", "/wait", "/unawaited",
    "/own_loop", "/sessions",
    "/pool_reset", "/cursor", "/cursor_fetch", "/cursors_n1", "/stream",
)  # fmt: skip


def _main_line() -> int:
    """The line of ``uvicorn.run(...)``: the script's frame below the event loop."""
    lines = (APPS / APP).read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if line.strip().startswith("uvicorn.run("))


@pytest.fixture(scope="module")
def run(pg_async_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The app served once, every route called once; its spans (OTLP, and a file for the report) and output."""
    receiver = Receiver()
    spans_file = tmp_path_factory.mktemp("async") / "spans.jsonl"
    env = base_env(
        receiver,
        OTEL_TRACES_EXPORTER="otlp,otlp_json_file",
        DBPERF_FILE_PATH=str(spans_file),
        APP_DB_URL=pg_async_url,
        APP_PG_DSN=pg_async_url.replace("+asyncpg", ""),
        # /later's query sleeps 50 ms: slow, with its stack trace (others may be too on a loaded machine)
        DBPERF_SLOW_QUERY_THRESHOLD_MS="40",
        DBPERF_STACKTRACE_THRESHOLD_MS="40",
    )
    port = free_port()
    log = open(TESTS / f".server-{port}.log", "w+")  # noqa: SIM115
    cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), APP, str(port)]
    proc = subprocess.Popen(cmd, cwd=APPS, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info: dict[str, Any] = {}
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a hang guard: a loaded machine starts servers slowly
        while True:
            assert proc.poll() is None, "the app exited"
            try:
                if get(base + "/ping", timeout=60)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.1)
        statuses = {route: get(base + route)[0] for route in ROUTES}
        spans = receiver.wait_for(
            lambda s: set(ROUTES) <= {x["attributes"].get("http.route") for x in s if x["kind"] == "SERVER"}
        )
        time.sleep(0.5)  # a hang guard's margin: spans that end after their response (none expected)
        spans = list(receiver.spans)
    finally:
        stop_group(proc, log, info, 15)
        receiver.close()
    assert statuses == dict.fromkeys(ROUTES, 200), info["output"]
    assert "internal error" not in info["output"], info["output"]
    yield {"spans": spans, "output": info["output"], "file": spans_file}


def _root(spans: list[dict[str, Any]], route: str) -> dict[str, Any]:
    (root,) = [s for s in spans if s["kind"] == "SERVER" and s["attributes"].get("http.route") == route]
    return root


def _db(spans: list[dict[str, Any]], root: dict[str, Any], needle: str = "") -> list[dict[str, Any]]:
    """The request's DB client spans whose statement holds ``needle``."""
    out = []
    for s in spans:
        a = s["attributes"]
        text = str(a.get("db.query.text") or a.get("db.statement") or "")
        if s["trace_id"] == root["trace_id"] and s["kind"] == "CLIENT" and needle in text and text:
            out.append(s)
    return out


def _where(span: dict[str, Any]) -> tuple[Any, Any]:
    a = span["attributes"]
    return a.get(A.CODE_FILE_PATH), a.get(A.CODE_LINE_NUMBER)


def _ms(span: dict[str, Any]) -> float:
    return (int(span["end"]) - int(span["start"])) / 1e6


def test_gathered_queries_are_located_at_the_awaiting_line(run: dict[str, Any]) -> None:
    spans = run["spans"]
    cases = {
        "/gather": "gather",  # coroutines of the pool straight into gather
        "/helper": "helper_gather",  # the same in a helper coroutine of the application
        "/nested_gather": "nested_gather",  # a gather of a gather
        "/wait_for": "wait_for",
        "/shield": "shield",
        "/wait": "wait",
        "/own_loop": "own_loop",  # the task a loop runs until it completes: the line that runs the loop
    }
    if sys.version_info >= (3, 11):
        cases["/taskgroup"] = "taskgroup"  # where the TaskGroup's parent task waits: the end of `async with`
    for route, marker in cases.items():
        root = _root(spans, route)
        queries = _db(spans, root, "doubled")  # the pool's reset and /own_loop's slow one apart
        assert queries, route
        assert {_where(s) for s in queries} == {(APP_FILE, marker_line(APP, marker))}, route

    # a slow one's stack trace: the awaiting task's application frames, not the line that started the loop;
    # under a loop the application runs itself, the frames below that loop
    # (/later: create_task, awaited later; /own_loop: gather under a loop of the application's own)
    for route, marker in (("/later", "later"), ("/own_loop", "own_loop_gather")):
        (slow,) = _db(spans, _root(spans, route), "pg_sleep")
        assert _where(slow) == (APP_FILE, marker_line(APP, marker)), route
        stack = slow["attributes"][A.CODE_STACKTRACE]
        assert f'"{APP_FILE}", line {marker_line(APP, marker)}, in {route[1:]}' in stack, stack
        assert f"line {_main_line()}," not in stack, stack

    # the N+1 of a fan-out names that line too
    for route, marker in (("/gather", "gather"), ("/helper", "helper_gather")):
        a = _root(spans, route)["attributes"]
        assert a[A.N_PLUS_ONE_DETECTED] is True and a[A.N_PLUS_ONE_REPEAT_COUNT] == FANOUT, route
        assert a[A.N_PLUS_ONE_CODE_LOCATION] == f"{APP_FILE}:{marker_line(APP, marker)}", route

    # async SQLAlchemy sessions' coroutines into gather: the ORM spans and the asyncpg spans inside them
    root = _root(spans, "/sessions")
    orm = [s for s in _db(spans, root, "tripled") if s["scope"] == "opentelemetry.instrumentation.sqlalchemy"]
    driver = [s for s in _db(spans, root, "tripled") if "asyncpg" in s["scope"]]
    assert len(orm) == len(driver) == FANOUT
    assert {_where(s) for s in orm + driver} == {(APP_FILE, marker_line(APP, "sessions"))}
    assert root["attributes"][A.N_PLUS_ONE_CODE_LOCATION] == f"{APP_FILE}:{marker_line(APP, 'sessions')}"

    # a task no application frame awaits while its query runs: no location rather than a wrong one (the
    # line that started the event loop lies below every task's frames)
    (query,) = _db(spans, _root(spans, "/unawaited"), "doubled")
    assert A.CODE_FILE_PATH not in query["attributes"], query["attributes"]
    main = (APP_FILE, _main_line())
    assert not [s for s in spans if _where(s) == main], [s["name"] for s in spans if _where(s) == main]


def test_pool_reset_on_release_is_housekeeping(run: dict[str, Any]) -> None:
    spans = run["spans"]
    root = _root(spans, "/pool_reset")
    queries = _db(spans, root, "doubled")
    assert len(queries) == 3
    (reset,) = _db(spans, root, RESET)
    assert reset["attributes"][A.QUERY_SETUP] is True, reset["attributes"]
    assert A.QUERY_SLOW not in reset["attributes"]
    a = root["attributes"]
    assert a[A.DB_QUERY_COUNT] == 3
    assert a[A.DB_DURATION_MS] == pytest.approx(sum(_ms(s) for s in queries), abs=1e-3)

    # a fan-out through the pool: one reset per checkout, none counted
    root = _root(spans, "/gather")
    assert len(_db(spans, root, RESET)) == FANOUT
    assert all(s["attributes"].get(A.QUERY_SETUP) is True for s in _db(spans, root, RESET))
    assert root["attributes"][A.DB_QUERY_COUNT] == FANOUT

    # async SQLAlchemy: the ROLLBACK each session's close sends is not counted either
    root = _root(spans, "/sessions")
    rollbacks = _db(spans, root, "ROLLBACK")
    assert len(rollbacks) >= FANOUT  # and one of the first connection's set-up
    assert all(s["attributes"].get(A.QUERY_NESTED) or s["attributes"].get(A.QUERY_SETUP) for s in rollbacks)
    assert root["attributes"][A.DB_QUERY_COUNT] == FANOUT


def test_cursor_fetches_are_one_query(run: dict[str, Any]) -> None:
    spans = run["spans"]
    for route, fetches in (("/cursor", ROWS + 1), ("/cursor_fetch", 5)):
        root = _root(spans, route)
        cursor = [s for s in _db(spans, root, "generate_series") if s["name"].startswith("CURSOR: ")]
        assert len(cursor) == fetches, route  # contrib: one span per __anext__ / fetch() call
        cursor.sort(key=lambda s: int(s["start"]))
        first = [s for s in cursor if not s["attributes"].get(CURSOR_FETCH)]
        assert first == cursor[:1], (route, len(first))  # the first fetch is the query
        assert all(s["attributes"].get(CURSOR_FETCH) is True for s in cursor[1:]), route
        a = root["attributes"]
        assert a[A.N_PLUS_ONE_DETECTED] is False, (route, a)
        assert a[A.DB_QUERY_COUNT] == 3, (route, a)  # BEGIN, the cursor, COMMIT
        others = [s for s in _db(spans, root) if s not in cursor and not s["attributes"].get(A.QUERY_SETUP)]
        assert a[A.DB_DURATION_MS] == pytest.approx(sum(_ms(s) for s in cursor + others), abs=1e-3), route
        assert {_where(s) for s in first} == {(APP_FILE, marker_line(APP, route.strip("/")))}

    # one cursor per id is a real N+1 of cursors
    a = _root(spans, "/cursors_n1")["attributes"]
    assert a[A.N_PLUS_ONE_DETECTED] is True and a[A.N_PLUS_ONE_REPEAT_COUNT] == FANOUT, a
    assert a[A.DB_QUERY_COUNT] == FANOUT + 2
    assert a[A.N_PLUS_ONE_CODE_LOCATION] == f"{APP_FILE}:{marker_line(APP, 'cursors_n1')}"

    # async SQLAlchemy's server-side cursor (stream): one query
    a = _root(spans, "/stream")["attributes"]
    assert a[A.DB_QUERY_COUNT] == 1 and a[A.N_PLUS_ONE_DETECTED] is False, a


def test_the_report_names_the_fanout_line_and_counts_no_housekeeping_or_fetches(run: dict[str, Any]) -> None:
    out = io.StringIO()
    assert main(["report", str(run["file"]), "--json"], out=out) == EXIT_OK
    report = json.loads(out.getvalue())
    statements = {q["statement"]: q for q in report["top_queries"]}
    assert not [s for s in statements if RESET in s], list(statements)  # housekeeping: not a query
    (series,) = [q for s, q in statements.items() if "generate_series(?, $1::int)" in s]
    assert series["count"] == 2 + FANOUT  # /cursor, /cursor_fetch, /cursors_n1: one per cursor
    (gather,) = [n for n in report["n_plus_one"] if n["route"] == "/gather"]
    assert gather["code_location"] == f"{APP_FILE}:{marker_line(APP, 'gather')}", gather
