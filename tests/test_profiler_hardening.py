"""The profiler API under hostile clients: slow clients, DNS rebinding. Real sockets, real server."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from otel_dbperf.profiler import ProfilerServer, QueryHistory, start
from otel_dbperf.profiler import server as server_module

TOKEN = "s3cret-profiler-token-0123456789"


@pytest.fixture
def serve() -> Iterator[Callable[..., ProfilerServer]]:
    servers: list[ProfilerServer] = []

    def _start(token: str | None = None) -> ProfilerServer:
        history = QueryHistory(10)
        history.add(0.2, "SELECT ?", slow=True)
        server = start("127.0.0.1:0", token, history)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()
        assert server.errors == 0


def request(server: ProfilerServer, path: str, host: str | None, token: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        if token is not None:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_slow_clients_are_bounded_and_a_normal_client_is_served(serve: Callable[..., ProfilerServer]) -> None:
    server = serve()
    before = threading.active_count()
    slow: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /profiler/stats HTTP/1.0\r\nHost: 127.0.0.1\r\n")  # never finished
            slow.append(sock)
        deadline = time.monotonic() + 30  # a hang guard: let the server accept them (0.5 s was enough when idle)
        while server._server.refused < 200 - server_module.MAX_CONNECTIONS - 64 and time.monotonic() < deadline:
            time.sleep(0.05)
        handlers = [t for t in threading.enumerate() if "process_request_thread" in t.name]
        assert 0 < len(handlers) <= server_module.MAX_CONNECTIONS
        assert threading.active_count() - before <= server_module.MAX_CONNECTIONS
        assert server._server.refused >= 200 - server_module.MAX_CONNECTIONS - 64  # beyond: 503, no thread
        # a normal client: refused with 503 (Retry-After) while the slots are taken, then served
        deadline = time.monotonic() + 60  # a hang detector: the header timeout frees the slots
        statuses = []
        while time.monotonic() < deadline:
            status, body = request(server, "/profiler/stats", f"127.0.0.1:{server.port}")
            statuses.append(status)
            if status == 200:
                break
            assert status == 503 and body["error"]["code"] == "busy"
            time.sleep(0.2)
        assert statuses[-1] == 200 and body["data"]["total_queries"] == 1
    finally:
        for sock in slow:
            sock.close()


def test_a_client_sending_a_byte_at_a_time_is_cut_at_the_header_deadline(
    serve: Callable[..., ProfilerServer],
) -> None:
    server = serve()
    server._server.header_timeout = 1.0
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    line = b"GET /profiler/stats HTTP/1.0\r\nX-Slow: " + b"a" * 1000
    sent = 0
    closed = False
    try:
        for byte in line:  # a per-read timeout would never fire: every read gets a byte
            sock.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.05)
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed = True
                break
            finally:
                sock.setblocking(True)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    finally:
        sock.close()
    assert closed and sent < len(line)


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "LOCALHOST:{port}", None])
def test_loopback_host_names_are_served_without_token(serve: Callable[..., ProfilerServer], host: str | None) -> None:
    server = serve()
    status, _ = request(server, "/profiler/stats", host.format(port=server.port) if host else None)
    assert status == 200


@pytest.mark.parametrize(
    "host", ["attacker.example:{port}", "attacker.example", "127.0.0.1:1", "localhost", "127.0.0.1.nip.io:{port}"]
)
def test_rebinding_host_is_refused_without_token(serve: Callable[..., ProfilerServer], host: str) -> None:
    server = serve()
    for path in ("/profiler/stats", "/profiler/health", "/profiler/query-details/1"):
        status, body = request(server, path, host.format(port=server.port))
        assert status == 421 and body["error"]["code"] == "misdirected_request"


def test_with_a_token_any_host_with_the_token_is_served(serve: Callable[..., ProfilerServer]) -> None:
    server = serve(TOKEN)
    assert request(server, "/profiler/stats", "profiler.internal:9465", TOKEN)[0] == 200
    assert request(server, "/profiler/stats", "attacker.example", None)[0] == 401
    assert request(server, "/profiler/stats", "attacker.example", "wrong-token-0123456789")[0] == 401
