"""Seed 000's profiler API: a client written only from its JSON examples reads every endpoint,
and the history names each query's route (held until the request's root span arrives)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.request import Request, urlopen

import pytest
from opentelemetry.trace import SpanKind
from support.pipeline import Pipeline

from otel_dbperf import Settings
from otel_dbperf._pipeline.derive import SpanDeriver
from otel_dbperf._pipeline.pending import PendingByRequest
from otel_dbperf.profiler import HistorySink, ProfilerServer, QueryHistory, start
from otel_dbperf.profiler.history import query_type, stack_lines


class SeedClient:
    """Written from seed 000's JSON examples alone: only the names, types and units shown there."""

    def __init__(self, base: str) -> None:
        self.base = base  # e.g. http://localhost:8000

    def _call(self, path: str, method: str = "GET") -> Any:
        with urlopen(Request(self.base + path, method=method), timeout=10) as response:
            return json.loads(response.read())

    def _data(self, path: str, method: str = "GET") -> Any:
        body = self._call(path, method)
        assert body["status"] == "success"
        return body["data"]

    def stats(self) -> dict[str, Any]:
        d = self._data("/profiler/stats")
        return {
            "enabled": bool(d["enabled"]),
            "total": int(d["total_queries"]),
            "slow": int(d["slow_queries"]),
            "slow_pct": float(d["slow_query_percentage"]),
            "avg_ms": float(d["avg_duration"]) * 1000,  # seconds in the seed
            "max_ms": float(d["max_duration"]) * 1000,
            "memory_mb": float(d["memory_usage_mb"]),
            "cpu": float(d["cpu_usage_percent"]),
            "by_table": {str(k): int(v) for k, v in d["queries_by_table"].items()},
            "by_operation": {str(k): int(v) for k, v in d["queries_by_operation"].items()},
        }

    def report(self, last_n: int) -> dict[str, Any]:
        d = self._data(f"/profiler/report?last_n_queries={last_n}")
        top = [
            (q["query"], float(q["duration"]), q["table"], q["operation"], q["memory_delta"], q["cpu_percent"],
             float(q["timestamp"]))
            for q in d["top_slow_queries"]
        ]  # fmt: skip
        return {"total": d["total_queries"], "slow": d["slow_queries"], "pct": d["slow_query_percentage"], "top": top}

    def slow_queries(self, threshold: float, limit: int) -> dict[str, Any]:
        d = self._data(f"/profiler/slow-queries?threshold={threshold}&limit={limit}")
        rows = [
            (q["query"], float(q["duration"]), q["table"], q["operation"], q["query_type"], q["memory_delta"],
             q["cpu_percent"], bool(q["has_stack_trace"]))
            for q in d["queries"]
        ]  # fmt: skip
        assert d["returned_queries"] == len(rows)
        return {"threshold": float(d["threshold_seconds"]), "total": int(d["total_slow_queries"]), "rows": rows}

    def query_details(self, query_id: int) -> dict[str, Any]:
        d = self._data(f"/profiler/query-details/{query_id}")
        assert all(isinstance(line, str) for line in d["stack_trace"])
        return {
            "query": d["query"],
            "duration": float(d["duration"]),
            "table": d["table"],
            "operation": d["operation"],
            "parameters": d.get("parameters"),
            "stack": list(d["stack_trace"]),
        }

    def toggle(self, enable: bool) -> Any:
        return self._call(f"/profiler/toggle?enable={'true' if enable else 'false'}", "POST")

    def reset(self) -> Any:
        return self._call("/profiler/reset", "POST")

    def health(self) -> dict[str, Any]:
        d = self._call("/profiler/health")
        return {"status": d["status"], "enabled": d["enabled"], "total": d["total_queries"],
                "slow": d["slow_queries"], "issues": list(d["issues"])}  # fmt: skip


STACK = (
    "Traceback (application frames, most recent call last):\n"
    '  File "app.py", line 45, in search\n  File "repo.py", line 123, in by_content'
)


@pytest.fixture
def server() -> Iterator[ProfilerServer]:
    history = QueryHistory(100)
    history.add(0.010, "SELECT * FROM messages WHERE id = ?", operation="SELECT", table="messages", cpu_time_ms=5.0)
    history.add(2.341, "SELECT * FROM messages WHERE content ILIKE ?", operation="SELECT", table="messages",
                slow=True, stacktrace=STACK, cpu_time_ms=1000.0, timestamp=1703123456.789)  # fmt: skip
    history.add(0.75, "UPDATE tasks SET done = ? WHERE id = ?", operation="UPDATE", table="tasks", slow=True)
    srv = start("127.0.0.1:0", None, history, slow_threshold_s=0.5)
    yield srv
    srv.stop()
    assert srv.errors == 0


def test_a_client_written_from_seed_000_reads_every_endpoint(server: ProfilerServer) -> None:
    client = SeedClient(server.url)
    stats = client.stats()
    assert stats["enabled"] and stats["total"] == 3 and stats["slow"] == 2
    assert stats["slow_pct"] == pytest.approx(66.667)
    assert stats["max_ms"] == pytest.approx(2341.0) and stats["avg_ms"] == pytest.approx((10 + 2341 + 750) / 3)
    assert stats["memory_mb"] > 1 and stats["cpu"] >= 0
    assert stats["by_table"] == {"messages": 2, "tasks": 1} and stats["by_operation"] == {"SELECT": 2, "UPDATE": 1}

    report = client.report(100)
    assert report["total"] == 3 and report["slow"] == 2
    query, duration, table, operation, memory_delta, cpu_percent, timestamp = report["top"][0]
    assert query == "SELECT * FROM messages WHERE content ILIKE ?" and duration == 2.341  # sanitized, seconds
    assert (table, operation, memory_delta, timestamp) == ("messages", "SELECT", None, 1703123456.789)
    assert cpu_percent == pytest.approx(42.7, abs=0.1)  # 1 s of CPU in 2.341 s

    slow = client.slow_queries(0.5, 20)
    assert slow["threshold"] == 0.5 and slow["total"] == 2
    assert [(r[0], r[4], r[7]) for r in slow["rows"]] == [
        ("SELECT * FROM messages WHERE content ILIKE ?", "read", True),
        ("UPDATE tasks SET done = ? WHERE id = ?", "write", False),
    ]
    assert slow["rows"][1][6] is None  # CPU not sampled for that one: null, not 0

    details = client.query_details(2)
    assert details["query"] == "SELECT * FROM messages WHERE content ILIKE ?" and details["duration"] == 2.341
    assert details["stack"] == ['File "app.py", line 45, in search', 'File "repo.py", line 123, in by_content']
    assert details["parameters"] is None  # never returned

    assert client.health() == {"status": "healthy", "enabled": True, "total": 3, "slow": 2, "issues": []}
    assert client.toggle(False)["data"]["enabled"] is False
    assert client.health()["status"] == "degraded"
    assert client.toggle(True)["data"]["enabled"] is True
    assert client.reset()["status"] == "success"
    assert client.stats()["total"] == 0 and client.slow_queries(0.5, 20)["rows"] == []


def test_query_type_and_stack_lines() -> None:
    assert [query_type(o) for o in ("SELECT", "show", "INSERT", "UPDATE", "DELETE", "CREATE", "COMMIT", "")] == [
        "read", "read", "write", "write", "write", "write", "other", "other",
    ]  # fmt: skip
    assert stack_lines("") == []
    assert stack_lines(STACK) == ['File "app.py", line 45, in search', 'File "repo.py", line 123, in by_content']


# ------------------------------------------------------------- the route, from the request's root


def _pipeline(history: QueryHistory, resource_samples: str = "request") -> tuple[Any, SpanDeriver]:
    settings = Settings.from_env({"DBPERF_SLOW_QUERY_THRESHOLD_MS": "0", "DBPERF_RESOURCE_SAMPLES": resource_samples})
    p = Pipeline(settings, sinks=[HistorySink(history)])
    assert p.deriver is not None
    return p.tracer, p.deriver


def _query(tracer: Any, statement: str) -> None:
    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as db:
        db.set_attribute("db.system.name", "postgresql")
        db.set_attribute("db.query.text", statement)


def test_history_entries_carry_their_request_route() -> None:
    history = QueryHistory(100)
    tracer, deriver = _pipeline(history)
    with tracer.start_as_current_span("GET /orders/{id}", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.route", "/orders/{id}")
        _query(tracer, "SELECT * FROM orders WHERE id = 7")
        _query(tracer, "SELECT * FROM lines WHERE order_id = 7")
        deriver.drain()
        assert history.totals()["total_queries"] == 0  # waiting for the root, which names the route
    _query(tracer, "SELECT 1")  # outside any request: added at once, without a route
    deriver.drain()
    entries = history.entries()
    assert [(e.statement, e.route) for e in entries] == [
        ("SELECT * FROM orders WHERE id = ?", "/orders/{id}"),
        ("SELECT * FROM lines WHERE order_id = ?", "/orders/{id}"),
        ("SELECT ?", ""),
    ]
    assert {e.pid for e in entries} == {__import__("os").getpid()}


@pytest.mark.parametrize("level", ["request", "query"])
def test_memory_delta_and_cpu_percent_are_sampled_only_per_query(level: str) -> None:
    history = QueryHistory(100)
    tracer, deriver = _pipeline(history, level)
    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as db:
        db.set_attribute("db.system.name", "postgresql")
        db.set_attribute("db.query.text", "SELECT 1")
        ballast = bytearray(32 * 1024 * 1024)  # touched: the RSS grows while the query runs
        ballast[::4096] = b"x" * len(ballast[::4096])
    deriver.drain()
    (entry,) = history.entries()
    summary, details = entry.summary(), entry.details()
    if level == "request":
        assert summary["memory_delta"] is None and summary["cpu_percent"] is None
        assert details["memory_delta"] is None and details["memory_delta_bytes"] is None
    else:
        assert isinstance(entry.memory_delta_bytes, int) and entry.memory_delta_bytes > 16 * 1024 * 1024
        assert summary["memory_delta"] == details["memory_delta"] == round(entry.memory_delta_bytes / 2**20, 3)
        assert summary["cpu_percent"] is not None
    del ballast


def test_waiting_queries_are_bounded() -> None:
    released: list[tuple[str, str]] = []
    overflow: list[str] = []
    now = [0.0]
    pending: PendingByRequest[str] = PendingByRequest(
        lambda item, route: released.append((item, route)), overflow.append, 3, 2, max_age_s=60, clock=lambda: now[0]
    )
    requests = [object() for _ in range(5)]
    for i, request in enumerate(requests[:3]):
        pending.add(request, f"q{i}a")
        pending.add(request, f"q{i}b")
        pending.add(request, f"q{i}c")  # over 2 per request
    assert overflow == ["q0c", "q1c", "q2c"] and released == [] and len(pending) == 3
    pending.add(requests[3], "q3a")  # a 4th request: the oldest is released without a route
    assert released == [("q0a", ""), ("q0b", "")] and len(pending) == 3
    pending.done(requests[2], "/r2")
    assert released[2:] == [("q2a", "/r2"), ("q2b", "/r2")] and len(pending) == 2
    now[0] = 61.0  # request 1 has waited a minute: released without a route when the next item comes
    pending.add(requests[4], "q4a")
    assert released[4:] == [("q1a", ""), ("q1b", ""), ("q3a", "")] and len(pending) == 1
    pending.add(None, "bare")
    assert released[-1] == ("bare", "")
    pending.clear()
    assert len(pending) == 0


def test_profiler_mount_setting() -> None:
    from otel_dbperf.settings import Settings

    assert Settings.from_env({"DBPERF_PROFILER_MOUNT": "/ops/profiler/"}).profiler_mount == "/ops/profiler"
    assert Settings.from_env({}).profiler_mount == ""
    for bad in ("profiler", "/a b", "/x?y=1", "//"):
        assert Settings.from_env({"DBPERF_PROFILER_MOUNT": bad}).profiler_mount in ("",), bad
