"""The profiler API's HTTP transport: stdlib ``ThreadingHTTPServer`` on a daemon thread, JSON only;
the endpoints and the access rules are :mod:`.api`'s.

Security: loopback needs no token; any other bind address requires one, and with a
token every endpoint but ``/profiler/health`` needs ``Authorization: Bearer <token>``.
Without a token only loopback ``Host`` names are answered (DNS rebinding: a web page whose
name resolves to 127.0.0.1 must not read the API). ``toggle`` and ``reset`` refuse what a web
page of another origin can send (:func:`check_browser`). At most :data:`MAX_CONNECTIONS` are
served at once (one thread each; more are answered 503 at once, by the accepting thread),
and a client has :data:`HEADER_TIMEOUT_S` in all to send its request. The serving thread
sleeps until a connection comes (no polling); :meth:`ProfilerServer.stop` wakes it.
Statements are sanitized by the caller; responses never echo request parameter values.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import re
import selectors
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .. import _forksafe
from .._guard import internal_error
from .api import API, TOKEN_FORMAT, HistoryView, HTTPError, answer, check_access, check_browser, error_body

MAX_BODY = 1024  # bytes accepted in a request body (no endpoint takes one)
_DRAIN = 64 * 1024  # an oversized body up to this is read and dropped so the 413 reaches the client
MAX_CONNECTIONS = 8  # served at once; each has a thread
HEADER_TIMEOUT_S = 5.0  # for the request line, headers and body, all together
_BUSY_BODY = b'{"status":"error","error":{"code":"busy","message":"too many connections, retry later"}}'
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Cache-Control: no-store\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_LINGER_S = 0.5  # after answering, input still arriving is read (and dropped) this long at most


class _DeadlineReader:
    """The request's input with one deadline for everything read: a client sending a byte now
    and then cannot hold its thread (a per-read timeout would restart on every byte)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buf = bytearray()
        self._eof = False
        self.closed = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        self._sock.settimeout(remaining)
        chunk = self._sock.recv(8192)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def readline(self, limit: int = -1) -> bytes:
        start = 0
        while True:
            newline = self._buf.find(b"\n", start)
            if newline >= 0:
                end = newline + 1
                break
            start = len(self._buf)
            if 0 <= limit <= len(self._buf) or not self._fill():
                end = len(self._buf)
                break
        if 0 <= limit < end:
            end = limit
        line = bytes(self._buf[:end])
        del self._buf[:end]
        return line

    def read(self, size: int = -1) -> bytes:
        while (size < 0 or len(self._buf) < size) and self._fill():
            pass
        end = len(self._buf) if size < 0 else min(size, len(self._buf))
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data

    def close(self) -> None:
        self.closed = True


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing to keep track of
    # The stdlib answers a malformed request line as HTTP/0.9, without headers: ours always have them.
    default_request_version = "HTTP/1.0"
    timeout = 10  # a client that stalls mid-request gives its thread back
    server_version = "otel-dbperf-profiler"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stdlib's buffered reader: ours reads with one deadline
        self.rfile = _DeadlineReader(self.connection, time.monotonic() + self.server.header_timeout)  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Silent: the host's stderr is not ours, and request lines may carry a query string.
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib sends HTML for malformed requests, too long lines, unknown methods; ours is JSON.
        self.close_connection = True
        reason = self.responses.get(code, ("error",))[0]
        self._send(code, error_body(reason.lower().replace(" ", "_"), reason))

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _dispatch(self) -> None:
        self.connection.settimeout(self.timeout)  # headers are in: the answer gets the write timeout
        try:
            self._route()
        except HTTPError as err:
            self._send(err.status, error_body(err.code, err.message, err.parameter), err.headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a handler bug never reaches the host
            self.server.errors += 1
            try:
                self._send(500, error_body("internal_error", "internal error"))
            except OSError:
                pass
            internal_error("profiler.http", exc)

    def _route(self) -> None:
        server = self.server
        split = urlsplit(self.path)
        check_access(
            server.token, self._loopback_host(), split.path, self.headers.get("Authorization"), self._misdirected()
        )
        self._read_body()
        check_browser(self.command, self.headers.get)
        self._send(200, answer(server.api, self.command, split.path, split.query))

    def _loopback_host(self) -> bool:
        """The Host header names this server on loopback (or is absent: no browser omits it)."""
        host = self.headers.get("Host")
        if host is None:
            return True
        host = host.strip().lower()
        port = self.server.server_port
        return host in self.server.loopback_hosts or (port == 80 and host in _LOOPBACK_NAMES)

    def _misdirected(self) -> str:
        """The 421's message: which Host values are served without a token, and the one received (a
        loopback name on another port, as through a port forward, is refused too: DNS rebinding)."""
        served = ", ".join(sorted(self.server.loopback_hosts))
        received = (self.headers.get("Host") or "").strip()[:100]
        return (
            f"without a token only requests whose Host header names this server on loopback are served "
            f"({served}); this one named {received!r}. Ask for one of those, or set DBPERF_PROFILER_TOKEN"
        )

    def _read_body(self) -> None:
        if "Transfer-Encoding" in self.headers:
            raise HTTPError(411, "length_required", "chunked request bodies are not accepted")
        raw = self.headers.get("Content-Length", "0").strip() or "0"
        if not raw.isdigit():
            raise HTTPError(400, "bad_request", "malformed Content-Length")
        length = int(raw)
        if length > MAX_BODY:
            self.close_connection = True
            if length <= _DRAIN:
                self.rfile.read(length)
            raise HTTPError(413, "body_too_large", f"request bodies are limited to {MAX_BODY} bytes")
        if length:
            self.rfile.read(length)  # no endpoint takes a body: read so the connection stays sane

    do_GET = do_POST = _dispatch

    def __getattr__(self, name: str) -> Any:
        # Any other method (PUT, OPTIONS, QUERY, ...) gets a JSON 405 naming the right one,
        # not the stdlib's 501: the stdlib looks the method up as a do_<METHOD> attribute.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Not the stdlib's default of 5: a burst of clients should queue, not be refused.
    request_queue_size = 64

    def __init__(self, host: str, port: int, family: int, api: API, token: str | None) -> None:
        self.address_family = family
        self.api = api
        self.token = token
        self.errors = 0  # handler exceptions turned into 500s
        self.refused = 0  # connections answered 503 because MAX_CONNECTIONS were being served
        self.header_timeout = HEADER_TIMEOUT_S
        self._slots = _forksafe.bounded_semaphore("profiler.connections", MAX_CONNECTIONS)
        super().__init__((host, port), _Handler)
        self.loopback_hosts = frozenset(f"{name}:{self.server_port}" for name in _LOOPBACK_NAMES)
        self._wake_read, self._wake_write = socket.socketpair()  # stop() writes: the loop wakes at once
        self._stopping = False

    def serve(self) -> None:
        """Accept connections until :meth:`stop`, sleeping in between: no poll interval (the
        stdlib's ``serve_forever`` wakes every half second, and its ``shutdown`` waits for that)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ, "listening")
            selector.register(self._wake_read, selectors.EVENT_READ, "wake")
            while not self._stopping:
                ready = {key.data for key, _ in selector.select()}
                if self._stopping or "wake" in ready:
                    return
                self._accept()
                self.service_actions()

    def _accept(self) -> None:
        try:
            request, client_address = self.get_request()
        except OSError:
            return  # the client went away before it was accepted
        try:
            self.process_request(request, client_address)
        except Exception:  # noqa: BLE001 - as the stdlib's loop: report, close, go on
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_read.close()
        self._wake_write.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, at most MAX_CONNECTIONS at once; beyond, 503 without a thread."""
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.setblocking(False)
                request.send(_BUSY)
                request.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.close_request(request)  # no lingering here: this is the accepting thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def shutdown_request(self, request: Any) -> None:
        """Close after a lingering read: a request body the answer did not need (a refused one)
        is read and dropped for a moment, so the client gets the answer, not a reset."""
        try:
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_S
            for _ in range(64):  # at most 256 KiB
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                request.settimeout(remaining)
                if not request.recv(4096):
                    break
        except OSError:
            pass
        self.close_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall start-up.
        if self.address_family == socket.AF_INET6:
            try:  # "::" serves IPv4 clients too, where the system allows it
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, OSError):
            return  # a client that went away mid-request: nothing to report
        try:
            internal_error("profiler.http", exc)  # logged once in production
        except Exception:  # noqa: BLE001 - re-raised under pytest: show it (errors makes the test fail)
            super().handle_error(request, client_address)


@dataclass
class ProfilerServer:
    """A running profiler API (see :func:`start`)."""

    host: str
    port: int
    history: HistoryView
    _server: _Server
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """Where a client on this host reaches the server (loopback for a wildcard bind)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def errors(self) -> int:
        """Handler exceptions answered with a 500 since start (tests assert it stays 0)."""
        return self._server.errors

    def stop(self) -> None:
        """Stop serving, at once (the serving thread is woken, not polled)."""
        self._server.stop()
        self._thread.join(timeout=5)
        self._server.server_close()


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (loopback) -> (host, port)."""
    addr = addr.strip()
    match = re.fullmatch(r"(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})", addr)
    if not match or int(match["port"]) > 65535:
        raise ValueError(f"profiler address {addr!r} is not host:port (e.g. 127.0.0.1:9465)")
    host = match["v6"] or match["host"] or "127.0.0.1"
    return host, int(match["port"])


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve anywhere


def start(addr: str, token: str | None, history: HistoryView, slow_threshold_s: float = 0.1) -> ProfilerServer:
    """Serve ``history`` at ``addr`` on a daemon thread.

    Raises ValueError for a malformed address or token, and when ``addr`` is not a
    loopback address and no token is given. OSError if the port cannot be bound.
    """
    host, port = parse_addr(addr)
    if token is not None and not TOKEN_FORMAT.fullmatch(token):
        # The message never contains the token itself.
        raise ValueError("DBPERF_PROFILER_TOKEN must be at least 16 visible ASCII characters (no spaces)")
    if token is None and not is_loopback(host):
        raise ValueError(
            f"the profiler API at {host}:{port} is reachable from other hosts: set DBPERF_PROFILER_TOKEN "
            "(clients then send 'Authorization: Bearer <token>') or bind to 127.0.0.1"
        )
    if not (math.isfinite(slow_threshold_s) and slow_threshold_s >= 0):
        raise ValueError("slow_threshold_s must be a number of seconds >= 0")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = _Server(host, port, family, API(history, slow_threshold_s, token is not None), token)
    thread = threading.Thread(target=server.serve, name="otel-dbperf-profiler", daemon=True)
    thread.start()
    return ProfilerServer(host, server.server_port, history, server, thread)
