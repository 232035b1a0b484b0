"""Flask + SQLAlchemy (sync) under opentelemetry-instrument + gunicorn, real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, base_env, get, marker_line, seeded_db_url, serve, server_output
from sqlalchemy import create_engine

from otel_dbperf import attributes as A

APP = "flask_app:app"
APP_FILE = str(APPS / "flask_app.py")


def _db_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if "db.system.name" in s["attributes"] or "db.system" in s["attributes"]]


def _roots(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["kind"] == "SERVER"]


def _statement(span: dict[str, Any]) -> str:
    a = span["attributes"]
    return str(a.get("db.query.text") or a.get("db.statement") or "")


def _ns(span: dict[str, Any]) -> int:
    return int(span["end"]) - int(span["start"])


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    from models import seed

    return seeded_db_url(request, tmp_path, "app.db", seed)


def test_location_n_plus_one_sanitizing_and_slow(receiver, db_url: str) -> None:  # type: ignore[no-untyped-def]
    env = base_env(
        receiver,
        APP_DB_URL=db_url,
        DBPERF_SLOW_QUERY_THRESHOLD_MS="100",
        DBPERF_STACKTRACE_THRESHOLD_MS="200",
    )
    with serve("gunicorn", APP, env, "-w", "1") as srv:
        for path in ("/author/3", "/authors", "/search", "/slow", "/fingerprint"):
            status, body = get(srv["url"] + path)
            assert status == 200, (path, body)
        routes = {"/author/<int:author_id>", "/authors", "/search", "/slow", "/fingerprint"}
        # by route, not a count of SERVER spans: serve()'s readiness probe may have made more than one /ping
        spans = receiver.wait_for(lambda s: routes <= {r["attributes"].get("http.route") for r in _roots(s)})
        output = server_output(srv)

    assert "internal error" not in output, output
    roots = {s["attributes"].get("http.route"): s for s in _roots(spans)}
    db = _db_spans(spans)
    queries = [s for s in db if _statement(s)]
    assert queries, spans

    # 1. the application line that issued the query (sync)
    point = [s for s in queries if s["parent_span_id"] == roots["/author/<int:author_id>"]["span_id"]]
    assert point, "no DB span under /author"
    assert {s["attributes"][A.CODE_FILE_PATH] for s in point} == {APP_FILE}
    assert {s["attributes"][A.CODE_LINE_NUMBER] for s in point} == {marker_line("flask_app.py", "point")}
    assert point[0]["attributes"][A.CODE_FUNCTION_NAME] == "author"

    # 2. N+1: one lazy load per author, detected on the request span with its location
    root = roots["/authors"]["attributes"]
    assert root[A.N_PLUS_ONE_DETECTED] is True
    assert root[A.N_PLUS_ONE_REPEAT_COUNT] == 8
    assert root[A.N_PLUS_ONE_CODE_LOCATION] == f"{APP_FILE}:{marker_line('flask_app.py', 'n_plus_one')}"
    assert root[A.N_PLUS_ONE_QUERY_SUMMARY] == "SELECT dbperf_books"
    assert root[A.DB_QUERY_COUNT] == 9
    assert len(root[A.N_PLUS_ONE_FINGERPRINT]) == 16
    assert root[A.N_PLUS_ONE_RELATIONSHIP] == "Author.books"  # a lazy load: its relationship and fix
    assert root[A.N_PLUS_ONE_SUGGESTION] == "selectinload(Author.books)"
    flagged = [s for s in queries if s["attributes"].get(A.N_PLUS_ONE)]
    assert len(flagged) == 8 - 5 + 1  # the repeats from the threshold (5) on
    assert roots["/author/<int:author_id>"]["attributes"][A.N_PLUS_ONE_DETECTED] is False

    # 3. the inline email literal is in no exported byte
    assert not any(b"alice.secret@example.com" in body for body in receiver.raw)
    unsafe = [s for s in queries if "dbperf_authors WHERE email" in _statement(s)]
    assert unsafe and all(_statement(s).endswith("email = ?") for s in unsafe)

    # 4. slow query: flagged, event, stacktrace with the app line; fast ones are not
    slow = [s for s in queries if "sleep" in _statement(s)]
    assert slow and all(s["attributes"][A.QUERY_SLOW] is True for s in slow)
    event = next(e for e in slow[0]["events"] if e["name"] == A.EVENT_SLOW_QUERY)
    assert event["attributes"][A.EVENT_DURATION_MS] >= 300
    assert event["attributes"][A.EVENT_THRESHOLD_MS] == 100
    stack = slow[0]["attributes"][A.CODE_STACKTRACE]
    assert f'"{APP_FILE}", line {marker_line("flask_app.py", "slow")}' in stack
    assert "site-packages" not in stack
    fast = [s for s in queries if s not in slow]
    for s in fast:  # not slow, no stack, but as its own duration says: a loaded machine may stretch one
        assert s["attributes"][A.QUERY_SLOW] is (_ns(s) >= 100_000_000), (_statement(s), _ns(s))
        assert (A.CODE_STACKTRACE in s["attributes"]) is (_ns(s) >= 200_000_000), (_statement(s), _ns(s))
    assert roots["/slow"]["attributes"][A.DB_SLOW_QUERY_COUNT] >= 1

    # 5. every DB span is enriched; request spans carry resource samples
    for s in queries:
        a = s["attributes"]
        assert len(a[A.QUERY_FINGERPRINT]) == 16 and a[A.DB_QUERY_SUMMARY] and A.CPU_TIME_MS not in a  # request level
    for r in roots.values():
        assert r["attributes"][A.MEMORY_RSS_BYTES] > 10_000_000
        assert r["attributes"][A.CPU_TIME_MS] > 0


def _fingerprint_in_new_process(receiver, db_url: str, workers: str) -> str:  # type: ignore[no-untyped-def]
    receiver.clear()
    with serve("gunicorn", APP, base_env(receiver, APP_DB_URL=db_url), "-w", workers) as srv:
        assert get(srv["url"] + "/fingerprint")[0] == 200
        # both spans: the nested sqlite3 one ends first and may come in an earlier batch
        spans = receiver.wait_for(lambda s: sum("WHERE id = ?" in _statement(x) for x in s) >= 2)
    found = [s for s in spans if "WHERE id = ?" in _statement(s)]
    # the SQLAlchemy span, and the sqlite3 DB-API span nested in it: both enriched alike
    assert sorted(s["scope"] for s in found) == [
        "opentelemetry.instrumentation.sqlalchemy",
        "opentelemetry.instrumentation.sqlite3",
    ]
    assert {s["attributes"][A.CODE_LINE_NUMBER] for s in found} == {marker_line("flask_app.py", "fingerprint")}
    (fingerprint,) = {s["attributes"][A.QUERY_FINGERPRINT] for s in found}
    assert [s["attributes"].get(A.QUERY_NESTED, False) for s in sorted(found, key=lambda s: s["scope"])] == [
        False,
        True,
    ]
    return str(fingerprint)


def test_same_statement_same_fingerprint_in_two_processes(receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from models import seed

    url = f"sqlite:///{tmp_path / 'fp.db'}"
    seed(create_engine(url))
    first = _fingerprint_in_new_process(receiver, url, "1")
    second = _fingerprint_in_new_process(receiver, url, "2")  # pre-fork workers: configured before fork
    assert first == second and len(first) == 16


def test_eight_threads_never_mix_rollups(receiver, pg_sync_url: str) -> None:  # type: ignore[no-untyped-def]
    from models import seed

    seed(create_engine(pg_sync_url))
    env = base_env(receiver, APP_DB_URL=pg_sync_url)
    with serve("gunicorn", APP, env, "-w", "1", "--threads", "8", "-k", "gthread") as srv:
        errors: list[Any] = []

        def client(tid: int) -> None:
            for j in range(6):
                k = (tid + j) % 7 + 1
                status, _ = get(f"{srv['url']}/n/{k}")
                if status != 200:
                    errors.append(status)

        threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        spans = receiver.wait_for(lambda s: len([r for r in _roots(s) if "/n/" in r["name"]]) >= 48)
    roots = [r for r in _roots(spans) if r["attributes"].get("http.route") == "/n/<int:k>"]
    assert len(roots) == 48
    for r in roots:
        k = int(str(r["attributes"].get("url.path")).rsplit("/", 1)[1])
        assert r["attributes"][A.DB_QUERY_COUNT] == k, r["attributes"]
        # each request's own DB spans are its children, and their number matches its roll-up
        children = [s for s in _db_spans(spans) if s["trace_id"] == r["trace_id"] and _statement(s)]
        assert len([s for s in children if s["scope"].endswith("sqlalchemy")]) == k, [
            (s["scope"], _statement(s)) for s in children
        ]


def test_failed_queries_are_enriched_and_their_errors_scrubbed(receiver, db_url: str) -> None:  # type: ignore[no-untyped-def]
    with serve("gunicorn", APP, base_env(receiver, APP_DB_URL=db_url)) as srv:
        assert get(srv["url"] + "/fail")[0] == 500
        assert get(srv["url"] + "/duplicate")[0] == 500
        spans = receiver.wait_for(
            lambda s: (
                len(
                    [
                        r
                        for r in _roots(s)
                        if r["attributes"].get("http.status_code", r["attributes"].get("http.response.status_code"))
                        == 500
                    ]
                )
                >= 2
            )
        )
    assert not any(b"leak@example.com" in body for body in receiver.raw)
    assert not any(b"dup-secret@example.org" in body for body in receiver.raw)
    failed = [s for s in _db_spans(spans) if s["status"]["code"] == 2 and s["scope"].endswith("sqlalchemy")]
    assert len(failed) == 2, [s["status"] for s in _db_spans(spans)]
    for span in failed:  # enriched like any other DB span
        a = span["attributes"]
        assert a[A.CODE_FILE_PATH] == APP_FILE and len(a[A.QUERY_FINGERPRINT]) == 16
        assert a[A.QUERY_SLOW] is (_ns(span) >= 100_000_000)  # the default 100 ms: as its own duration says
    if "postgresql" in db_url:  # PostgreSQL names the duplicate key's value: it is masked
        (dup,) = [s for s in failed if "dbperf_authors" in _statement(s)]
        assert "Key (id)=(?) already exists" in dup["status"]["message"]
