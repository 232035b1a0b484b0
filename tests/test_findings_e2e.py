"""The request-span findings beyond N+1 queries, end to end: a Flask app under
opentelemetry-instrument + gunicorn (sync workers, seed 002) that calls a JSON API once per user
(HTTP N+1) and builds a large JSON document in the request thread (CPU-bound)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import APPS, base_env, free_port, get, get_json, marker_line, serve, server_output, until

from otel_dbperf import attributes as A

APP_FILE = str(APPS / "findings_app.py")


class _Api(BaseHTTPRequestHandler):
    """A small JSON API: /teams/<id> lists six members, /users/<id> is one user."""

    def do_GET(self) -> None:  # noqa: N802
        parts = self.path.strip("/").split("/")
        if parts[0] == "teams":
            body: Any = {"id": int(parts[1]), "members": [11, 12, 13, 14, 15, 16]}
        else:
            body = {"id": int(parts[1]), "name": f"user {parts[1]}"}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_n_plus_one_and_cpu_bound_requests(receiver, api: str) -> None:  # type: ignore[no-untyped-def]
    # the CPU-bound verdict: /report uses 400 ms of CPU (by construction, whatever the machine's speed),
    # /wait under 50 ms; the ratio is set low so that a loaded machine's wall-clock time cannot decide it
    env = base_env(
        receiver,
        APP_API_URL=api,
        APP_CPU_S="0.4",
        DBPERF_CPU_BOUND_THRESHOLD_MS="50",
        DBPERF_CPU_BOUND_RATIO="0.05",
        DBPERF_HTTP_N_PLUS_ONE_THRESHOLD="5",
        DBPERF_PROFILER_ADDR=f"127.0.0.1:{(port := free_port())}",
    )
    with serve("gunicorn", "findings_app:app", env, "-w", "1") as srv:
        for path in ("/users", "/report", "/wait"):
            status, body = get(srv["url"] + path)
            assert status == 200, (path, body)
        routes = {"/users", "/report", "/wait"}
        spans = receiver.wait_for(
            lambda s: routes <= {r["attributes"].get("http.route") for r in s if r["kind"] == "SERVER"}
        )
        # the profiler's stats count each route's findings (fed by the derivation thread)
        stats = until(
            lambda: get_json(f"http://127.0.0.1:{port}/profiler/stats")["data"]["requests_by_route"],
            lambda r: routes <= set(r),
        )
        output = server_output(srv)
    assert "internal error" not in output, output
    assert stats["/users"]["http_n_plus_one_requests"] == 1 and stats["/users"]["cpu_bound_requests"] == 0
    assert stats["/report"]["cpu_bound_requests"] == 1 and stats["/wait"]["cpu_bound_requests"] == 0
    roots = {s["attributes"].get("http.route"): s["attributes"] for s in spans if s["kind"] == "SERVER"}

    # HTTP N+1: six GETs of /users/{id} (and one of /teams/{id}), the route template by structure
    users = roots["/users"]
    assert users[A.REQUEST_HTTP_CALL_COUNT] == 7
    assert users[A.REQUEST_HTTP_DURATION_MS] > 0
    assert users[A.REQUEST_HTTP_N_PLUS_ONE_DETECTED] is True
    assert users[A.REQUEST_HTTP_N_PLUS_ONE_ROUTE] == f"GET {api}/users/{{id}}"
    assert users[A.REQUEST_HTTP_N_PLUS_ONE_REPEAT_COUNT] == 6
    line = marker_line("findings_app.py", "http_n_plus_one")
    assert users[A.REQUEST_HTTP_N_PLUS_ONE_CODE_LOCATION] == f"{APP_FILE}:{line}"
    assert "/users/{id}" in users[A.REQUEST_HTTP_N_PLUS_ONE_SUGGESTION]
    client = [s for s in spans if s["kind"] == "CLIENT" and s["trace_id"] == _trace(spans, "/users")]
    assert len(client) == 7  # the calls themselves are exported as the requests instrumentation made them
    for route in ("/report", "/wait"):
        assert roots[route][A.REQUEST_HTTP_N_PLUS_ONE_DETECTED] is False
        assert A.REQUEST_HTTP_CALL_COUNT not in roots[route]

    # CPU-bound: /report's CPU time is its duration's bulk; the sampler names the JSON building line
    report = roots["/report"]
    assert report[A.REQUEST_CPU_BOUND] is True
    assert report[A.CPU_TIME_MS] >= 400
    assert 0 < report[A.REQUEST_CPU_RATIO] <= 1.0
    assert report[A.REQUEST_CPU_BOUND_SAMPLES] >= 1
    assert report[A.REQUEST_CPU_BOUND_CODE_LOCATION] == f"{APP_FILE}:{marker_line('findings_app.py', 'cpu_hot')}"
    assert report[A.REQUEST_CPU_BOUND_FUNCTION].startswith("build_document")
    assert "worker" in report[A.REQUEST_CPU_BOUND_SUGGESTION]
    # /wait is as long, but waits: not CPU-bound, and never sampled
    wait = roots["/wait"]
    assert wait[A.REQUEST_CPU_BOUND] is False
    assert A.REQUEST_CPU_BOUND_CODE_LOCATION not in wait
    assert users[A.REQUEST_CPU_BOUND] is False


def _trace(spans: list[dict[str, Any]], route: str) -> str:
    (root,) = [s for s in spans if s["kind"] == "SERVER" and s["attributes"].get("http.route") == route]
    return str(root["trace_id"])
