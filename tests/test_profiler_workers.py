"""One profiler API for every worker of a pre-fork server, end to end: opentelemetry-instrument
gunicorn -w 3 (a Flask app on PostgreSQL) and uvicorn --workers 2 (FastAPI), real traffic."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import base_env, free_port, get, serve, server_output, until
from sqlalchemy import create_engine

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="pre-fork servers need fork")


def _call(url: str, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _ok(url: str, method: str = "GET") -> Any:
    status, body = _call(url, method)
    assert status == 200, (url, status, body)
    return body


def _spread(base: str, paths: list[str], threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        assert all(status == 200 for status, _ in pool.map(lambda p: get(base + p), paths))


@pytest.fixture
def pg_app_env(receiver: Any, pg_sync_url: str) -> Callable[..., dict[str, str]]:
    from models import seed

    seed(create_engine(pg_sync_url))

    def env(port: int, **extra: str) -> dict[str, str]:
        return base_env(receiver, APP_DB_URL=pg_sync_url, DBPERF_PROFILER_ADDR=f"127.0.0.1:{port}", **extra)

    return env


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_gunicorn_workers_share_one_profiler(pg_app_env: Callable[..., dict[str, str]], worker_class: str) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/profiler"
    with serve("gunicorn", "flask_app:app", pg_app_env(port), "-w", "3", "-k", worker_class) as srv:
        base = srv["url"]
        # warm-up: every worker connects (the dialect's first-connect queries), then reset
        _spread(base, ["/slow"] * 12, 12)
        stats = until(lambda: _ok(f"{api}/stats")["data"], lambda s: s["slow_queries"] >= 12)
        assert stats["workers"]["live"] == 3 and stats["slow_queries"] >= 12, stats  # + first-connect ones, if slow
        _ok(f"{api}/reset", "POST")
        assert _ok(f"{api}/stats")["data"]["total_queries"] == 0

        _spread(base, ["/n/3"] * 20 + ["/slow"] * 6, 8)
        sent = 20 * 3 + 6
        stats = until(lambda: _ok(f"{api}/stats")["data"], lambda s: s["total_queries"] >= sent)
        assert stats["total_queries"] == sent, stats
        assert stats["avg_duration"] > 0 and stats["memory_usage_mb"] > 0
        report = _ok(f"{api}/report?last_n_queries=1000&top=100")["data"]
        assert report["total_queries"] == sent
        # the six 0.3 s sleeps are slow whatever the load; a trivial SELECT may pass 100 ms on a loaded
        # machine too, so the slow count is checked against the entries' own flags, not a constant
        entries = _ok(f"{api}/slow-queries?threshold=0&limit=1000")["data"]["queries"]
        assert len(entries) == sent and stats["slow_queries"] == sum(q["slow"] for q in entries), stats
        sleeps = [q for q in entries if q["query"] == "SELECT pg_sleep(?)"]
        assert len(sleeps) == 6 and all(q["slow"] and q["duration_s"] >= 0.3 for q in sleeps), sleeps
        # 26 requests, 8 at a time, on 3 workers: more than one served (which ones is the scheduler's choice)
        by_pid = {q["pid"]: q for q in entries}
        assert len(by_pid) >= 2, entries
        assert set(by_pid) <= set(stats["workers"]["pids"])
        for pid, summary in [*by_pid.items(), (sleeps[0]["pid"], sleeps[0])]:
            details = _ok(f"{api}/query-details/{summary['id']}")["data"]
            assert details["pid"] == pid and details["query"] == summary["query"]
            assert details["route"] == ("/slow" if "pg_sleep" in summary["query"] else "/n/<int:k>")
            assert details["service_instance_id"]  # each worker's own
        assert len(
            {_ok(f"{api}/query-details/{q['id']}")["data"]["service_instance_id"] for q in by_pid.values()}
        ) == len(by_pid)
        assert _call(f"{api}/query-details/{(999 << 22) | 1}")[0] == 404

        # toggle and reset reach every worker
        assert _ok(f"{api}/toggle?enable=false", "POST")["data"]["enabled"] is False
        _spread(base, ["/n/2"] * 9, 6)
        assert _ok(f"{api}/health")["status"] == "degraded"
        dropped = until(lambda: _ok(f"{api}/stats")["data"], lambda s: s["history"]["dropped"] >= 18)
        assert dropped["total_queries"] == sent and dropped["history"]["dropped"] == 18
        _ok(f"{api}/toggle?enable=true", "POST")
        _ok(f"{api}/reset", "POST")
        empty = _ok(f"{api}/stats")["data"]
        assert empty["total_queries"] == 0 and empty["history"]["kept"] == 0
        assert _ok(f"{api}/slow-queries?threshold=0")["data"]["queries"] == []

        # a worker killed: the API keeps answering, the worker's totals as last seen are kept
        _spread(base, ["/n/1"] * 9, 6)
        seen = until(lambda: _ok(f"{api}/stats")["data"], lambda s: s["total_queries"] >= 9)
        assert seen["total_queries"] == 9
        victim = max(
            seen["workers"]["pids"],
            key=lambda p: sum(
                q["pid"] == p for q in _ok(f"{api}/slow-queries?threshold=0&limit=1000")["data"]["queries"]
            ),
        )
        os.kill(victim, signal.SIGKILL)
        after = until(lambda: _ok(f"{api}/stats")["data"], lambda s: s["workers"]["killed"] == 1)
        assert after["workers"]["killed"] == 1 and victim not in after["workers"]["pids"], after
        assert after["total_queries"] == 9  # its totals as last seen
        assert (
            after["workers"]["lost_entries"] >= 1 and after["history"]["kept"] == 9 - after["workers"]["lost_entries"]
        )
        _spread(base, ["/n/1"] * 6, 6)  # the replacement worker serves
        assert until(lambda: _ok(f"{api}/stats")["data"], lambda s: s["total_queries"] >= 15)["total_queries"] >= 15
        output = server_output(srv)
    assert "Traceback" not in output and "otel-dbperf" not in output, output


def test_recycled_workers_hand_their_queries_over(pg_app_env: Callable[..., dict[str, str]]) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/profiler"
    with serve("gunicorn", "flask_app:app", pg_app_env(port), "-w", "2", "--max-requests", "20") as srv:
        base = srv["url"]
        statuses: list[int] = []
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(get, base + "/n/2") for _ in range(120)]
            while not all(f.done() for f in futures):  # the API answers while workers come and go
                statuses.append(_call(f"{api}/stats")[0])
            assert all(f.result()[0] == 200 for f in futures)
        assert statuses and set(statuses) == {200}

        sent = 120 * 2
        stats = until(lambda: _ok(f"{api}/stats")["data"], lambda s: s["total_queries"] >= sent)
        assert stats["workers"]["exited"] >= 4, stats  # 120 requests (+ /ping) over 2 workers at 20 each
        assert stats["workers"]["killed"] == 0
        # every query is counted: the recycled workers handed theirs over at exit
        assert stats["total_queries"] == sent, stats
        assert stats["requests_by_route"]["/n/<int:k>"]["requests"] == 120  # the routes are handed over too
        assert stats["requests_by_route"]["/n/<int:k>"]["db_queries"] == sent
        assert _ok(f"{api}/report?last_n_queries=1000")["data"]["total_queries"] == min(1000, stats["history"]["kept"])
        output = server_output(srv)
    assert "Traceback" not in output, output


@pytest.mark.parametrize("launcher", ["uvicorn --workers 2", "gunicorn -w 2 -k uvicorn.workers.UvicornWorker"])
def test_asgi_workers_share_one_profiler(receiver: Any, pg_async_url: str, pg_sync_url: str, launcher: str) -> None:
    from models import seed

    seed(create_engine(pg_sync_url))
    port = free_port()
    api = f"http://127.0.0.1:{port}/profiler"
    env = base_env(receiver, APP_DB_URL=pg_async_url, DBPERF_PROFILER_ADDR=f"127.0.0.1:{port}")
    kind, *args = launcher.split()
    with serve(kind, "fastapi_app:app", env, *args) as srv:
        base = srv["url"]
        stats = until(lambda: _ok(f"{api}/stats")["data"], lambda s: s["workers"]["live"] == 2)
        assert stats["workers"]["live"] == 2, stats  # spawned workers, each serving the master
        _spread(base, ["/n/3"] * 30 + ["/slow"] * 4, 8)
        sent = 30 * 3 + 4
        stats = until(lambda: _ok(f"{api}/stats")["data"], lambda s: s["total_queries"] >= sent)
        assert stats["total_queries"] == sent, stats
        entries = _ok(f"{api}/slow-queries?threshold=0&limit=1000")["data"]["queries"]
        assert len(entries) == sent and stats["slow_queries"] == sum(q["slow"] for q in entries), stats
        assert sum(q["slow"] for q in entries if "pg_sleep" in q["query"]) == 4  # slow whatever the load
        first_of = {q["pid"]: q["id"] for q in entries}
        assert set(first_of) <= set(stats["workers"]["pids"])
        for pid, entry_id in first_of.items():
            assert _ok(f"{api}/query-details/{entry_id}")["data"]["pid"] == pid
        _ok(f"{api}/reset", "POST")
        assert _ok(f"{api}/stats")["data"]["total_queries"] == 0
        output = server_output(srv)
    assert "Traceback" not in output, output


# ------------------------------------------------------------------ on the app's own port


TOKEN = "mount-token-0123456789abcdef"


def _profiler_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Server spans of requests to the API (paths under /profiler or /ops/profiler)."""
    keys = ("url.path", "http.target", "http.route", "http.url", "url.full")
    return [
        s
        for s in spans
        if s["kind"] == "SERVER"
        and any("profiler" in str(s["attributes"].get(k, "")) for k in keys)
        or "profiler" in s["name"]
    ]


def _mounted(url: str, token: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _mounted_ok(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200, url
        return json.loads(resp.read())


def test_mounted_on_the_apps_port_under_gunicorn(pg_app_env: Callable[..., dict[str, str]], receiver: Any) -> None:
    env = pg_app_env(0, DBPERF_PROFILER_MOUNT="/profiler", DBPERF_PROFILER_TOKEN=TOKEN)
    del env["DBPERF_PROFILER_ADDR"]  # the mount alone
    with serve("gunicorn", "flask_app:app", env, "-w", "3") as srv:
        api = srv["url"] + "/profiler"
        _spread(srv["url"], ["/slow"] * 9, 9)
        stats = until(lambda: _mounted_ok(f"{api}/stats")["data"], lambda s: s["slow_queries"] >= 9)
        assert stats["slow_queries"] >= 9 and stats["workers"]["live"] == 3, stats  # whichever worker answers
        _mounted_ok(f"{api}/reset", "POST")
        _spread(srv["url"], ["/n/2"] * 10, 5)
        stats = until(lambda: _mounted_ok(f"{api}/stats")["data"], lambda s: s["total_queries"] >= 20)
        assert stats["total_queries"] == 20, stats
        slow = _mounted_ok(f"{api}/slow-queries?threshold=0&limit=100")["data"]
        for q in slow["queries"][:5]:
            assert _mounted_ok(f"{api}/query-details/{q['id']}")["data"]["route"] == "/n/<int:k>"
        for _ in range(5):
            _mounted_ok(f"{api}/stats")
        # without the token, from loopback or not, nothing but health is answered
        assert _mounted(f"{api}/stats")[0] == 401
        assert _mounted(f"{api}/stats", headers={"X-Forwarded-For": "203.0.113.9"})[0] == 401
        assert _mounted(f"{api}/health")[0] == 200
        assert _mounted(f"{api}/nope", TOKEN)[0] == 404 and _mounted(f"{api}/reset", TOKEN)[0] == 405
        assert _mounted_ok(f"{api}/stats")["data"]["total_queries"] == 20  # the API's own requests run no query
        spans = receiver.wait_for(lambda s: sum(x["kind"] == "SERVER" and "/n/" in x["name"] for x in s) >= 10)
        assert not _profiler_spans(spans)  # not the app's requests: no spans
        output = server_output(srv)
    assert "Traceback" not in output, output


@pytest.mark.parametrize("launcher", ["uvicorn", "uvicorn --workers 2"])
def test_mounted_on_an_asgi_apps_port_with_a_token(
    receiver: Any, pg_async_url: str, pg_sync_url: str, launcher: str
) -> None:
    from models import seed

    seed(create_engine(pg_sync_url))
    env = base_env(receiver, APP_DB_URL=pg_async_url, DBPERF_PROFILER_MOUNT="/ops/profiler/",
                   DBPERF_PROFILER_TOKEN=TOKEN)  # fmt: skip
    kind, *args = launcher.split()
    with serve(kind, "fastapi_app:app", env, *args) as srv:
        api = srv["url"] + "/ops/profiler"
        _spread(srv["url"], ["/n/3"] * 10, 5)
        assert _mounted(f"{api}/stats")[0] == 401  # the token is required on every endpoint ...
        assert _mounted(f"{api}/stats", "wrong-token-0123456789")[0] == 401
        assert _mounted(f"{api}/health")[0] == 200  # ... but health
        stats = until(lambda: _mounted(f"{api}/stats", TOKEN)[1]["data"], lambda s: s["total_queries"] >= 30)
        assert stats["total_queries"] == 30, stats
        assert ("workers" in stats) == ("--workers" in launcher)
        assert get(srv["url"] + "/ping")[0] == 200  # the app itself is untouched
        spans = receiver.wait_for(lambda s: sum(x["kind"] == "SERVER" and "/n/" in x["name"] for x in s) >= 10)
        assert not _profiler_spans(spans)  # not the app's requests: no spans
        output = server_output(srv)
    assert "Traceback" not in output, output
