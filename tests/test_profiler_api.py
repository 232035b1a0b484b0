"""The profiler API: a real server on a free port, driven over HTTP (no mocks)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest

from otel_dbperf import _guard
from otel_dbperf.profiler import ProfilerServer, QueryHistory, parse_addr, start
from otel_dbperf.profiler.history import MAX_KEYS, OTHER

TOKEN = "s3cret-profiler-token-0123456789"
Reply = tuple[int, Any, dict[str, Any]]


def call(
    server: ProfilerServer,
    path: str,
    method: str = "GET",
    token: str | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """(status, headers, JSON body) of one request; HTTP errors are replies too."""
    request = Request(server.url + path, method=method, data=data, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urlopen(request, timeout=10) as response:
            status, head, raw = response.status, response.headers, response.read()
    except HTTPError as err:
        status, head, raw = err.code, err.headers, err.read()
    if method == "HEAD":
        assert raw == b""
        return status, head, {}
    assert head["Content-Type"] == "application/json", (path, head["Content-Type"])
    body = json.loads(raw)
    assert isinstance(body, dict)
    return status, head, body


@pytest.fixture
def serve() -> Iterator[Callable[..., ProfilerServer]]:
    """Start servers; at teardown stop them and check that no handler raised (no 500)."""
    servers: list[ProfilerServer] = []

    def _start(history: QueryHistory, token: str | None = None, addr: str = "127.0.0.1:0", **kw: Any) -> Any:
        server = start(addr, token, history, **kw)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()
        assert server.errors == 0


def fill(history: QueryHistory, n: int, start_ms: int = 0) -> None:
    """``n`` queries of 1, 2, ... ms (+ start_ms); every third is slow, on two tables."""
    for i in range(1, n + 1):
        history.add(
            (start_ms + i) / 1000,
            f"SELECT * FROM t{i % 2} WHERE id = ?",
            fingerprint=f"{i % 2:016x}",
            operation="SELECT" if i % 4 else "UPDATE",
            table=f"t{i % 2}",
            db_system="sqlite",
            slow=i % 3 == 0,
            code_location=f"app.py:{i}",
            function="view",
            stacktrace="app.py:1 in view" if i % 3 == 0 else "",
            trace_id=f"{i:032x}",
            span_id=f"{i:016x}",
            route="/orders",
            cpu_time_ms=0.5,
        )


# ---------------------------------------------------------------- the history


def test_history_keeps_the_last_max_and_exact_totals() -> None:
    history = QueryHistory(max_history=10)
    fill(history, 20)
    kept = history.entries()
    assert [e.id for e in kept] == list(range(11, 21))
    t = history.totals()
    assert t["total_queries"] == 20 and t["kept"] == 10 and t["evicted"] == 10
    assert t["slow_queries"] == 6  # 3, 6, ..., 18
    expected = 0.0
    for i in range(1, 21):
        expected += i / 1000  # the same additions in the same order: exactly equal
    assert t["total_duration_s"] == expected
    assert t["max_duration_s"] == 0.02
    assert t["queries_by_table"] == {"t0": 10, "t1": 10}
    assert t["queries_by_operation"] == {"SELECT": 15, "UPDATE": 5}
    assert history.get(10) is None and history.get(11) == kept[0] and history.get(21) is None
    assert [e.id for e in history.entries(3)] == [18, 19, 20]


def test_counts_by_key_are_capped() -> None:
    history = QueryHistory(max_history=5)
    for i in range(MAX_KEYS + 50):
        history.add(0.001, "SELECT ?", table=f"table{i}", operation="")
    history.add(0.001, "SELECT ?", table="table0")
    by_table = history.totals()["queries_by_table"]
    assert len(by_table) == MAX_KEYS + 1
    assert by_table[OTHER] == 50 and by_table["table0"] == 2
    assert history.totals()["queries_by_operation"] == {"_none": MAX_KEYS + 51}


def test_disabled_history_drops_and_reset_keeps_ids_increasing() -> None:
    history = QueryHistory(max_history=10)
    fill(history, 3)
    history.enabled = False
    assert history.add(1.0, "SELECT ?") == 0
    assert history.totals()["dropped"] == 1 and history.totals()["total_queries"] == 3
    history.enabled = True
    history.reset()
    assert history.entries() == [] and history.totals()["total_queries"] == 0
    assert history.add(1.0, "SELECT ?") == 4  # an old id never names a newer query
    assert history.get(1) is None


def test_requests_by_route_sum_waits_keep_the_longest_and_are_capped(serve: Callable[..., ProfilerServer]) -> None:
    history = QueryHistory(max_history=5)
    history.add_request("/hold", 1, 0.1, 120.5, 0)
    history.add_request("/hold", 1, 0.1, 0.0, 0)
    history.add_request("/hold", 2, 0.3, 30.25, 1)
    for i in range(MAX_KEYS + 5):
        history.add_request(f"/r{i}", 0, 0.0, 1.0, 0)
    history.add_request("", 0, 0.0, 0.0, 0)  # no route: counted under _none (or _other once full)
    status, _, body = call(serve(history), "/profiler/stats")
    routes = body["data"]["requests_by_route"]
    assert status == 200 and len(routes) == MAX_KEYS + 1
    assert routes["/hold"] == {
        "requests": 3, "db_queries": 4, "db_duration_s": 0.5, "pool_wait_ms": 150.75, "max_pool_wait_ms": 120.5,
        "pool_waited_requests": 2, "pool_timeouts": 1, "cpu_bound_requests": 0, "http_n_plus_one_requests": 0,
        "event_loop_blocked_requests": 0, "sequential_queries_requests": 0,
    }  # fmt: skip
    assert routes[OTHER]["requests"] == 7 and routes[OTHER]["pool_wait_ms"] == 6.0  # 6 routes past the cap, and ""
    history.enabled = False
    history.add_request("/hold", 1, 0.1, 5.0, 0)
    assert history.totals()["requests_by_route"]["/hold"]["requests"] == 3  # disabled: not counted
    history.reset()
    assert history.totals()["requests_by_route"] == {}


def test_add_never_raises_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_guard, "RERAISE", False)
    errors = _guard.error_count()
    history = QueryHistory()
    assert history.add("not a number", "SELECT ?") == 0  # type: ignore[arg-type]
    assert _guard.error_count() == errors + 1
    assert history.totals()["total_queries"] == 0


def test_max_history_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_history"):
        QueryHistory(0)


def test_stats(serve: Callable[..., ProfilerServer]) -> None:
    history = QueryHistory(max_history=10)
    fill(history, 12)
    status, _, body = call(serve(history), "/profiler/stats")
    assert status == 200 and body["status"] == "success"
    data = body["data"]
    assert data["enabled"] is True
    assert (data["total_queries"], data["slow_queries"], data["slow_query_percentage"]) == (12, 4, 33.333)
    assert data["max_duration_s"] == 0.012
    assert data["avg_duration_s"] == pytest.approx(0.0065)
    assert data["queries_by_table"] == {"t0": 6, "t1": 6}
    assert data["history"] == {"kept": 10, "max_history": 10, "dropped": 0, "evicted": 2}
    assert data["process"]["memory_rss_bytes"] > 0 and data["process"]["cpu_time_s"] >= 0


def test_report_over_the_last_n(serve: Callable[..., ProfilerServer]) -> None:
    history = QueryHistory(max_history=50)
    fill(history, 30)
    server = serve(history)
    status, _, body = call(server, "/profiler/report?last_n_queries=6&top=2")
    assert status == 200
    data = body["data"]
    assert (data["total_queries"], data["slow_queries"]) == (6, 2)  # ids 25..30: 27 and 30 slow
    assert data["max_duration_s"] == 0.03
    top = data["top_slow_queries"]
    assert [q["id"] for q in top] == [30, 29]
    assert top[0]["has_stacktrace"] is True and top[1]["has_stacktrace"] is False
    assert "stacktrace" not in top[0]  # lists stay small: details has it
    _, _, default = call(server, "/profiler/report")
    assert default["data"]["total_queries"] == 30 and len(default["data"]["top_slow_queries"]) == 10


def test_slow_queries_threshold_and_limit(serve: Callable[..., ProfilerServer]) -> None:
    history = QueryHistory()
    fill(history, 40)
    server = serve(history, slow_threshold_s=0.035)
    _, _, body = call(server, "/profiler/slow-queries")
    data = body["data"]
    assert data["threshold_s"] == 0.035 and data["total_slow_queries"] == 6  # 35..40 ms
    assert [q["id"] for q in data["queries"]] == [40, 39, 38, 37, 36, 35]
    _, _, body = call(server, "/profiler/slow-queries?threshold=0.01&limit=3")
    data = body["data"]
    assert (data["total_slow_queries"], data["returned_queries"]) == (31, 3)
    assert [q["duration_s"] for q in data["queries"]] == [0.04, 0.039, 0.038]


def test_query_details(serve: Callable[..., ProfilerServer]) -> None:
    history = QueryHistory()
    fill(history, 3)
    history.add(0.2, "SELECT ?", plan="SCAN t", plan_format="text", verdict="full scan")
    server = serve(history)
    _, _, body = call(server, "/profiler/query-details/3")
    data = body["data"]
    assert data["id"] == 3 and data["code_location"] == "app.py:3" and data["stacktrace"] == "app.py:1 in view"
    assert data["trace_id"] == f"{3:032x}" and data["span_id"] == f"{3:016x}"
    assert data["statement"] == "SELECT * FROM t1 WHERE id = ?" and data["plan"] is None
    _, _, body = call(server, "/profiler/query-details/4")
    assert (body["data"]["plan"], body["data"]["plan_format"], body["data"]["verdict"]) == (
        "SCAN t",
        "text",
        "full scan",
    )
    status, _, body = call(server, "/profiler/query-details/99")
    assert status == 404 and body["error"]["code"] == "not_found"
    for bad in ("abc", "0", "-1", "1.5", str(2**64)):
        status, _, body = call(server, f"/profiler/query-details/{bad}")
        assert status == 400 and body["error"]["parameter"] == "id", bad


def test_health(serve: Callable[..., ProfilerServer]) -> None:
    history = QueryHistory(max_history=3)
    server = serve(history)
    _, _, body = call(server, "/profiler/health")
    assert body == {"status": "healthy", "enabled": True, "total_queries": 0, "slow_queries": 0, "issues": []}
    fill(history, 4)
    _, _, body = call(server, "/profiler/health")
    assert body["status"] == "healthy"  # evicting old queries is normal operation
    history.enabled = False
    history.add(0.1, "SELECT ?")
    _, _, body = call(server, "/profiler/health")
    assert body["status"] == "degraded" and body["total_queries"] == 4
    assert body["issues"] == ["profiler disabled: 1 queries dropped"]


def test_toggle_and_reset_are_post_only(serve: Callable[..., ProfilerServer]) -> None:
    history = QueryHistory()
    fill(history, 5)
    server = serve(history)
    for path in ("/profiler/toggle?enable=false", "/profiler/reset"):
        status, head, body = call(server, path)
        assert status == 405 and head["Allow"] == "POST" and body["error"]["code"] == "method_not_allowed"
    assert history.enabled and history.totals()["total_queries"] == 5
    status, _, body = call(server, "/profiler/toggle?enable=false", "POST")
    assert status == 200 and body["data"] == {"enabled": False} and not history.enabled
    assert history.add(0.1, "SELECT ?") == 0
    _, _, body = call(server, "/profiler/toggle?enable=true", "POST")
    assert body["data"] == {"enabled": True} and history.enabled
    status, _, body = call(server, "/profiler/reset", "POST")
    assert status == 200 and body["data"] == {"reset": True}
    assert history.totals()["total_queries"] == 0 and history.entries() == []


def test_wrong_methods_and_unknown_paths(serve: Callable[..., ProfilerServer]) -> None:
    server = serve(QueryHistory())
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"):
        status, head, _ = call(server, "/profiler/stats", method)
        assert (status, head["Allow"]) == (405, "GET"), method
    status, head, _ = call(server, "/profiler/stats", "HEAD")
    assert (status, head["Allow"]) == (405, "GET")
    for path in ("/", "/profiler", "/profiler/", "/profiler/stats/", "/profiler/nope", "/metrics"):
        status, _, body = call(server, path)
        assert status == 404 and body["status"] == "error", path


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/profiler/report?last_n_queries=0", "last_n_queries"),
        ("/profiler/report?last_n_queries=11", "last_n_queries"),  # over max_history
        ("/profiler/report?last_n_queries=zz9secret", "last_n_queries"),
        ("/profiler/report?last_n_queries=", "last_n_queries"),
        ("/profiler/report?top=101", "top"),
        ("/profiler/report?top=1&top=2", "top"),
        ("/profiler/slow-queries?threshold=-1", "threshold"),
        ("/profiler/slow-queries?threshold=nan", "threshold"),
        ("/profiler/slow-queries?threshold=inf", "threshold"),
        ("/profiler/slow-queries?threshold=zz9secret", "threshold"),
        ("/profiler/slow-queries?limit=0", "limit"),
        ("/profiler/slow-queries?limit=1001", "limit"),
        ("/profiler/slow-queries?limit=2.5", "limit"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    serve: Callable[..., ProfilerServer], path: str, parameter: str
) -> None:
    status, _, body = call(serve(QueryHistory(max_history=10)), path)
    assert status == 400 and body["error"]["parameter"] == parameter
    assert body["error"]["message"].startswith(parameter)
    assert "zz9secret" not in json.dumps(body)  # values are never echoed


def test_toggle_parameter(serve: Callable[..., ProfilerServer]) -> None:
    server = serve(QueryHistory())
    for query in ("", "?enable=", "?enable=yes", "?enable=TRUE", "?enable=true&enable=false"):
        status, _, body = call(server, "/profiler/toggle" + query, "POST")
        assert status == 400 and body["error"]["parameter"] == "enable", query


def test_request_bodies_are_bounded(serve: Callable[..., ProfilerServer]) -> None:
    history = QueryHistory()
    fill(history, 2)
    server = serve(history)
    status, _, body = call(server, "/profiler/reset", "POST", data=b"x" * 2000)
    assert status == 413 and body["error"]["code"] == "body_too_large"
    assert history.totals()["total_queries"] == 2  # refused before the handler ran
    status, _, _ = call(server, "/profiler/reset", "POST", data=b"{}", headers={"Content-Type": "application/json"})
    assert status == 200
    status, _, body = call(server, "/profiler/reset", "POST", data=b"{}")  # urllib's default: a form body
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"  # what a cross-site form sends
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("POST", "/profiler/reset", body=iter([b"abc"]), encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 411 and response.getheader("Content-Type") == "application/json"
    connection.close()


def test_malformed_requests_get_json(serve: Callable[..., ProfilerServer]) -> None:
    server = serve(QueryHistory())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        raw = b""
        while chunk := sock.recv(4096):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400") and b"Content-Type: application/json" in head
    assert json.loads(payload)["status"] == "error"


def test_openapi_document_lists_every_endpoint(serve: Callable[..., ProfilerServer]) -> None:
    server = serve(QueryHistory(max_history=7))
    _, _, doc = call(server, "/profiler/openapi.json")
    assert doc["openapi"].startswith("3.0")
    assert set(doc["paths"]) == {
        f"/profiler/{p}"
        for p in ("stats", "report", "slow-queries", "query-details/{id}", "health", "toggle", "reset", "openapi.json")
    }
    report = doc["paths"]["/profiler/report"]["get"]
    last_n = next(p for p in report["parameters"] if p["name"] == "last_n_queries")
    assert (last_n["schema"]["maximum"], last_n["schema"]["default"]) == (7, 7)
    assert "security" not in doc and "401" not in report["responses"]


@pytest.mark.parametrize("reraise", [False, None], ids=["production", "pytest"])
def test_handler_exception_is_a_json_500(monkeypatch: pytest.MonkeyPatch, reraise: bool | None) -> None:
    """Production: logged once, never raised. Under pytest: re-raised on the server thread
    (traceback on stderr) and counted in ``errors``, which the ``serve`` fixture asserts is 0."""

    class BrokenHistory(QueryHistory):
        def totals(self) -> dict[str, Any]:
            raise RuntimeError("boom")

    monkeypatch.setattr(_guard, "RERAISE", reraise)
    server = start("127.0.0.1:0", None, BrokenHistory())
    try:
        status, _, body = call(server, "/profiler/stats")
        assert status == 500 and body["error"]["code"] == "internal_error" and "boom" not in json.dumps(body)
        assert server.errors == 1
        assert call(server, "/profiler/report")[0] == 200  # the server goes on serving
    finally:
        server.stop()


# ---------------------------------------------------------------- addresses and the token


def test_parse_addr() -> None:
    assert parse_addr("127.0.0.1:9465") == ("127.0.0.1", 9465)
    assert parse_addr(":9465") == ("127.0.0.1", 9465)  # loopback by default, not every interface
    assert parse_addr("[::1]:9465") == ("::1", 9465)
    assert parse_addr("localhost:0") == ("localhost", 0)
    for bad in ("9465", "127.0.0.1", "127.0.0.1:99999", "::1:9465", "host:port"):
        with pytest.raises(ValueError, match="host:port"):
            parse_addr(bad)


@pytest.mark.parametrize("addr", ["0.0.0.0:0", "[::]:0", "192.168.1.10:0", "example.com:0"])
def test_non_loopback_without_token_is_refused(addr: str) -> None:
    with pytest.raises(ValueError, match="DBPERF_PROFILER_TOKEN"):
        start(addr, None, QueryHistory())


def test_bad_slow_threshold_is_refused() -> None:
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="slow_threshold_s"):
            start("127.0.0.1:0", None, QueryHistory(), slow_threshold_s=bad)


def test_weak_token_is_refused_without_echoing_it() -> None:
    for weak in ("short", "", "has a space in it, long enough"):
        with pytest.raises(ValueError, match="DBPERF_PROFILER_TOKEN") as info:
            start("127.0.0.1:0", weak, QueryHistory())
        assert weak == "" or weak not in str(info.value)


def test_loopback_without_token_is_open(serve: Callable[..., ProfilerServer]) -> None:
    server = serve(QueryHistory(), addr="localhost:0")
    assert call(server, "/profiler/stats")[0] == 200


def test_ipv6_loopback(serve: Callable[..., ProfilerServer]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = serve(QueryHistory(), addr="[::1]:0")
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    assert server.url.startswith("http://[::1]:") and call(server, "/profiler/health")[0] == 200


def test_token_guards_every_endpoint_but_health(serve: Callable[..., ProfilerServer]) -> None:
    history = QueryHistory()
    fill(history, 3)
    # Any interface is allowed with a token; the client still connects over loopback.
    server = serve(history, token=TOKEN, addr="0.0.0.0:0")
    assert server.url == f"http://127.0.0.1:{server.port}"
    paths = [
        ("GET", "/profiler/stats"),
        ("GET", "/profiler/report"),
        ("GET", "/profiler/slow-queries"),
        ("GET", "/profiler/query-details/1"),
        ("GET", "/profiler/openapi.json"),
        ("GET", "/profiler/nope"),  # unknown paths too: nothing is revealed without the token
        ("POST", "/profiler/toggle?enable=false"),
        ("POST", "/profiler/reset"),
    ]
    wrong = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}]
    for method, path in paths:
        for headers in wrong:
            status, head, body = call(server, path, method, headers=headers)
            assert status == 401 and head["WWW-Authenticate"] == "Bearer", (path, headers)
            assert TOKEN not in json.dumps(body)
    assert history.enabled and history.totals()["total_queries"] == 3  # nothing changed
    for method, path in paths[:5]:
        assert call(server, path, method, token=TOKEN)[0] == 200, path
    assert call(server, "/profiler/health")[0] == 200  # liveness probes carry no token
    assert call(server, "/profiler/reset", token=TOKEN)[0] == 405  # GET: even with the token
    assert call(server, "/profiler/toggle?enable=false", "POST", token=TOKEN)[0] == 200 and not history.enabled
    assert call(server, "/profiler/reset", "POST", token=TOKEN)[0] == 200
    assert history.totals()["total_queries"] == 0
    _, _, doc = call(server, "/profiler/openapi.json", token=TOKEN)
    assert doc["security"] == [{"bearer": []}] and doc["paths"]["/profiler/health"]["get"]["security"] == []
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


# ---------------------------------------------------------------- concurrency


def test_concurrent_writers_and_readers(serve: Callable[..., ProfilerServer]) -> None:
    history = QueryHistory(max_history=100)
    server = serve(history)
    writers, per_writer = 4, 2000
    failures: list[BaseException] = []
    done = threading.Event()

    def write(n: int) -> None:
        try:
            for i in range(per_writer):
                history.add(0.001, "SELECT ?", table=f"t{n}", slow=i % 10 == 0)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    def read() -> None:
        try:
            while not done.is_set():
                for path in ("/profiler/stats", "/profiler/report?last_n_queries=100"):
                    status, _, body = call(server, path)
                    assert status == 200 and body["status"] == "success"
                    assert body["data"]["total_queries"] <= writers * per_writer
                status, _, body = call(server, "/profiler/slow-queries?threshold=0")
                assert status == 200 and body["data"]["total_slow_queries"] <= 100  # never more than kept
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in readers + threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    for thread in readers:
        thread.join()
    assert failures == []
    t = history.totals()
    assert t["total_queries"] == writers * per_writer and t["slow_queries"] == writers * per_writer // 10
    assert t["queries_by_table"] == {f"t{n}": per_writer for n in range(writers)}
    assert [e.id for e in history.entries()] == list(range(writers * per_writer - 99, writers * per_writer + 1))


# ---------------------------------------------------------------- the OpenAPI contract, fuzzed

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
def test_schemathesis_fuzz_conforms_to_the_openapi_document(
    serve: Callable[..., ProfilerServer], token: str | None, tmp_path: Path
) -> None:
    """schemathesis 4.x CLI: every check (schema, status codes, content types, negative data,
    undeclared methods, ignored auth); the run must find nothing and the server no 500."""
    history = QueryHistory(max_history=50)
    fill(history, 60)
    server = serve(history, token=token, slow_threshold_s=0.02)
    command = [
        str(SCHEMATHESIS),
        "run",
        server.url + "/profiler/openapi.json",
        "--checks=all",
        "--max-examples=50",
        "--seed=20240601",
        "--workers=1",
        "--no-color",
    ]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    # 7: every operation but the document itself, which schemathesis leaves out.
    assert "Tested: 7" in output and " passed" in output, output[-3000:]
