"""HTTP N+1 under asyncio, end to end (seed 004): a FastAPI app under opentelemetry-instrument + uvicorn
calls a JSON API once per user with httpx (AsyncClient in a loop and through ``asyncio.gather``, the
sync Client) and aiohttp (ClientSession in a loop and through ``gather``). The request span names the
route template, the repeat count and the application line: the loop's, or the ``gather`` call's,
one await-chain up when the calls' tasks have no application frame of their own.

One server (and one API) for the module; each test reads the spans of its routes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import APPS, base_env, get, marker_line, serve, server_output
from otlp_receiver import Receiver

from otel_dbperf import attributes as A

APP = "httpasync_app.py"
APP_FILE = str(APPS / APP)
CALLS = 6
ROUTES = ("/httpx_loop", "/httpx_gather", "/httpx_sync", "/aiohttp_loop", "/aiohttp_gather", "/few")


class _Api(BaseHTTPRequestHandler):
    """A small JSON API: /users/<id> is one user."""

    def do_GET(self) -> None:  # noqa: N802
        user_id = int(self.path.strip("/").split("/")[1])
        data = json.dumps({"id": user_id, "name": f"user {user_id}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def run() -> Iterator[dict[str, Any]]:
    """The API and the app served once, every route called once; the spans and the API's base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    receiver = Receiver()
    try:
        with serve(
            "uvicorn",
            "httpasync_app:app",
            base_env(receiver, APP_API_URL=api, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=""),
        ) as srv:
            statuses = {route: get(srv["url"] + route) for route in ROUTES}
            spans = receiver.wait_for(
                lambda s: set(ROUTES) <= {x["attributes"].get("http.route") for x in s if x["kind"] == "SERVER"}
            )
            output = server_output(srv)
    finally:
        receiver.close()
        server.shutdown()
        server.server_close()
    assert {r: s[0] for r, s in statuses.items()} == dict.fromkeys(ROUTES, 200), statuses
    assert "internal error" not in output, output
    yield {"spans": spans, "api": api}


def _root(spans: list[dict[str, Any]], route: str) -> dict[str, Any]:
    (root,) = [s for s in spans if s["kind"] == "SERVER" and s["attributes"].get("http.route") == route]
    return root


def _check(run: dict[str, Any], route: str, marker: str) -> None:
    spans = run["spans"]
    root = _root(spans, route)
    client = [s for s in spans if s["kind"] == "CLIENT" and s["trace_id"] == root["trace_id"]]
    assert len(client) == CALLS, (route, [s["name"] for s in client])  # the instrumentation traced each call
    a = root["attributes"]
    assert a[A.REQUEST_HTTP_CALL_COUNT] == CALLS, (route, a)
    assert a[A.REQUEST_HTTP_DURATION_MS] > 0, route
    assert a[A.REQUEST_HTTP_N_PLUS_ONE_DETECTED] is True, (route, a)
    assert a[A.REQUEST_HTTP_N_PLUS_ONE_ROUTE] == f"GET {run['api']}/users/{{id}}", route
    assert a[A.REQUEST_HTTP_N_PLUS_ONE_REPEAT_COUNT] == CALLS, route
    assert a.get(A.REQUEST_HTTP_N_PLUS_ONE_CODE_LOCATION) == f"{APP_FILE}:{marker_line(APP, marker)}", (route, a)
    assert "/users/{id}" in a[A.REQUEST_HTTP_N_PLUS_ONE_SUGGESTION], route


def test_httpx_async_client_in_a_loop_and_gathered(run: dict[str, Any]) -> None:
    _check(run, "/httpx_loop", "httpx_loop")
    # the calls' coroutines straight into gather: the line that awaits them, one await-chain up
    _check(run, "/httpx_gather", "httpx_gather")


def test_httpx_sync_client(run: dict[str, Any]) -> None:
    _check(run, "/httpx_sync", "httpx_sync")


def test_aiohttp_client_session_in_a_loop_and_gathered(run: dict[str, Any]) -> None:
    _check(run, "/aiohttp_loop", "aiohttp_loop")
    _check(run, "/aiohttp_gather", "aiohttp_gather")


def test_under_the_threshold_no_finding(run: dict[str, Any]) -> None:
    a = _root(run["spans"], "/few")["attributes"]
    assert a[A.REQUEST_HTTP_CALL_COUNT] == 2
    assert a[A.REQUEST_HTTP_N_PLUS_ONE_DETECTED] is False
    assert A.REQUEST_HTTP_N_PLUS_ONE_ROUTE not in a
