"""The profiler's HTTP API: stdlib ``ThreadingHTTPServer`` on a daemon thread, JSON only.

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
import hmac
import ipaddress
import json
import math
import os
import re
import selectors
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from .. import _forksafe
from .._guard import internal_error
from .._resources import rss_bytes
from .history import ProfilerBusy, QueryEntry, slowest_first
from .openapi import MAX_ID, MAX_LIMIT, MAX_TOP, document

MAX_BODY = 1024  # bytes accepted in a request body (no endpoint takes one)
_DRAIN = 64 * 1024  # an oversized body up to this is read and dropped so the 413 reaches the client
_PREFIX = "/profiler/"
MAX_CONNECTIONS = 8  # served at once; each has a thread
HEADER_TIMEOUT_S = 5.0  # for the request line, headers and body, all together
_BUSY_BODY = b'{"status":"error","error":{"code":"busy","message":"too many connections, retry later"}}'
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Cache-Control: no-store\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
#: the bodies a web page may send to another origin without asking first (a CORS "simple request")
_SIMPLE_BODIES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
_LINGER_S = 0.5  # after answering, input still arriving is read (and dropped) this long at most


class _HTTPError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.parameter, self.headers = parameter, headers


def _bad(parameter: str, message: str) -> _HTTPError:
    return _HTTPError(400, "bad_parameter", message, parameter)


_DIGITS = re.compile(r"[0-9]{1,19}")


def _int_param(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = _single(query, name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise _bad(name, f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _float_param(query: dict[str, list[str]], name: str, default: float) -> float:
    raw = _single(query, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise _bad(name, f"{name} must be a number of seconds >= 0")
    return value


def _bool_param(query: dict[str, list[str]], name: str) -> bool:
    raw = _single(query, name)
    if raw is None:
        raise _bad(name, f"{name} is required (true or false)")
    if raw not in ("true", "false"):
        raise _bad(name, f"{name} must be true or false")
    return raw == "true"


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise _bad(name, f"{name} must be given once")
    return values[0]


def _aggregate(entries: list[QueryEntry]) -> dict[str, Any]:
    total = len(entries)
    slow = sum(1 for e in entries if e.slow)
    duration = sum(e.duration_s for e in entries)
    data: dict[str, Any] = {
        "total_queries": total,
        "slow_queries": slow,
        "slow_query_percentage": _percent(slow, total),
        "avg_duration_s": duration / total if total else 0.0,
        "max_duration_s": max((e.duration_s for e in entries), default=0.0),
        "total_duration_s": duration,
    }
    data["avg_duration"], data["max_duration"] = data["avg_duration_s"], data["max_duration_s"]  # seed 000
    return data


def _routes(routes: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Each route's request figures as the API gives them (durations rounded to the microsecond)."""
    return {
        route: {
            "requests": int(row["requests"]),
            "db_queries": int(row["db_queries"]),
            "db_duration_s": round(row["db_duration_s"], 6),
            "pool_wait_ms": round(row["pool_wait_ms"], 3),
            "max_pool_wait_ms": round(row["max_pool_wait_ms"], 3),
            "pool_waited_requests": int(row["pool_waited_requests"]),
            "pool_timeouts": int(row["pool_timeouts"]),
        }
        for route, row in routes.items()
    }


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def _slowest(entries: list[QueryEntry], limit: int) -> list[dict[str, Any]]:
    return [e.summary() for e in slowest_first(entries)[:limit]]


def _cpu_time_s() -> float:
    times = os.times()
    return times.user + times.system


def _process(rss: int | None = None, cpu_time_s: float | None = None) -> dict[str, Any]:
    rss = rss_bytes() if rss is None else rss
    return {
        "memory_rss_bytes": rss,
        "memory_usage_mb": round(rss / (1024 * 1024), 3),
        "cpu_time_s": round(_cpu_time_s() if cpu_time_s is None else cpu_time_s, 3),
    }


class HistoryView(Protocol):
    """What the API reads: a :class:`QueryHistory`, or the master's merged view of its workers."""

    max_history: int
    enabled: bool

    def totals(self) -> dict[str, Any]: ...
    def last_seen_totals(self) -> dict[str, Any]: ...  # without asking anyone: health
    def entries(self, last_n: int | None = None) -> list[QueryEntry]: ...
    def slowest(self, threshold_s: float, limit: int) -> tuple[int, list[QueryEntry]]: ...
    def get(self, entry_id: int) -> QueryEntry | None: ...
    def reset(self) -> None: ...


class _API:
    """The endpoints apart from the HTTP plumbing: each takes the parsed query string and
    returns the JSON body, or raises :class:`_HTTPError`."""

    def __init__(self, history: HistoryView, slow_threshold_s: float, token_required: bool) -> None:
        self.history = history
        self.slow_threshold_s = slow_threshold_s
        self.token_required = token_required  # the OpenAPI document declares the bearer scheme
        self._cpu_mark = (time.monotonic(), _cpu_time_s())  # cpu_usage_percent: since the last stats
        self._cpu_lock = _forksafe.lock("profiler.cpu")
        self.routes: dict[str, tuple[str, Callable[[dict[str, list[str]]], dict[str, Any]]]] = {
            "stats": ("GET", self.stats),
            "report": ("GET", self.report),
            "slow-queries": ("GET", self.slow_queries),
            "health": ("GET", self.health),
            "openapi.json": ("GET", self.openapi),
            "toggle": ("POST", self.toggle),
            "reset": ("POST", self.reset),
        }

    def stats(self, query: dict[str, list[str]]) -> dict[str, Any]:
        t = self.history.totals()
        total = t["total_queries"]
        process = _process(t.get("memory_rss_bytes"), t.get("cpu_time_s"))  # merged: every worker's sum
        avg = t["total_duration_s"] / total if total else 0.0
        data = {
            "enabled": t["enabled"],
            "total_queries": total,
            "slow_queries": t["slow_queries"],
            "slow_query_percentage": _percent(t["slow_queries"], total),
            "avg_duration": avg,
            "max_duration": t["max_duration_s"],
            "memory_usage_mb": process["memory_usage_mb"],
            "cpu_usage_percent": self._cpu_usage_percent(process["cpu_time_s"]),
            "avg_duration_s": avg,
            "max_duration_s": t["max_duration_s"],
            "total_duration_s": t["total_duration_s"],
            "queries_by_table": t["queries_by_table"],
            "queries_by_operation": t["queries_by_operation"],
            "requests_by_route": _routes(t["requests_by_route"]),
            "history": {
                "kept": t["kept"],
                "max_history": t["max_history"],
                "dropped": t["dropped"],
                "evicted": t["evicted"],
            },
            "process": process,
        }
        if "workers" in t:
            data["workers"] = t["workers"]
        return {"status": "success", "data": data}

    def _cpu_usage_percent(self, cpu: float) -> float:
        """CPU use (% of one core) since the previous stats call (first: since start)."""
        now = time.monotonic()
        with self._cpu_lock:
            (then, cpu_then), self._cpu_mark = self._cpu_mark, (now, cpu)
        return round(max(0.0, 100.0 * (cpu - cpu_then) / (now - then)), 1) if now > then else 0.0

    def report(self, query: dict[str, list[str]]) -> dict[str, Any]:
        max_history = self.history.max_history
        last_n = _int_param(query, "last_n_queries", min(100, max_history), 1, max_history)
        top = _int_param(query, "top", 10, 1, MAX_TOP)
        entries = self.history.entries(last_n)
        data = _aggregate(entries)
        data["top_slow_queries"] = _slowest(entries, top)
        return {"status": "success", "data": data}

    def slow_queries(self, query: dict[str, list[str]]) -> dict[str, Any]:
        threshold = _float_param(query, "threshold", self.slow_threshold_s)
        limit = _int_param(query, "limit", 20, 1, MAX_LIMIT)
        matching, slowest = self.history.slowest(threshold, limit)
        queries = [e.summary() for e in slowest]
        data = {
            "threshold_seconds": threshold,
            "threshold_s": threshold,
            "total_slow_queries": matching,
            "returned_queries": len(queries),
            "queries": queries,
        }
        return {"status": "success", "data": data}

    def details(self, raw_id: str) -> dict[str, Any]:
        if not _DIGITS.fullmatch(raw_id) or not 1 <= int(raw_id) <= MAX_ID:
            raise _bad("id", "id must be an integer >= 1")
        entry = self.history.get(int(raw_id))
        if entry is None:
            raise _HTTPError(404, "not_found", "no query with this id in the history (it may have been evicted)")
        return {"status": "success", "data": entry.details()}

    def health(self, query: dict[str, list[str]]) -> dict[str, Any]:
        t = self.history.last_seen_totals()  # never waits on a pre-fork server's workers
        issues = []
        if not t["enabled"]:
            issues.append(f"profiler disabled: {t['dropped']} queries dropped")
        # a full history that evicts old queries is normal operation, not an issue (stats says so)
        return {
            "status": "degraded" if issues else "healthy",
            "enabled": t["enabled"],
            "total_queries": t["total_queries"],
            "slow_queries": t["slow_queries"],
            "issues": issues,
        }

    def toggle(self, query: dict[str, list[str]]) -> dict[str, Any]:
        self.history.enabled = _bool_param(query, "enable")
        return {"status": "success", "data": {"enabled": self.history.enabled}}

    def reset(self, query: dict[str, list[str]]) -> dict[str, Any]:
        self.history.reset()
        return {"status": "success", "data": {"reset": True}}

    def openapi(self, query: dict[str, list[str]]) -> dict[str, Any]:
        return document(self.history.max_history, self.slow_threshold_s, self.token_required)


def check_access(token: str | None, open_ok: bool, path: str, authorization: str | None) -> None:
    """Raise the error a request gets before its parameters are looked at (421, 401), if any.

    ``open_ok``: without a token the request may be served (the port of its own: a loopback
    ``Host``; the mount is never served without a token).
    """
    if token is None and not open_ok:
        raise _HTTPError(421, "misdirected_request", "without a token only loopback host names are served")
    if path != _PREFIX + "health" and token is not None:
        given = (authorization or "").encode("utf-8", "replace")
        # Constant time: the comparison does not tell how much of a guess was right.
        if not hmac.compare_digest(given, b"Bearer " + token.encode()):
            raise _HTTPError(
                401, "unauthorized", "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )


def check_browser(method: str, header: Callable[[str], str | None]) -> None:
    """Raise 403/415 for a state-changing request (``POST``) a web page of another origin can send.

    A page anywhere can make the user's browser POST to a loopback port (``fetch`` with
    ``mode: "no-cors"``, a form) without reading the answer: enough to toggle or reset. Browsers
    say where a request comes from: ``Sec-Fetch-Site`` (only ``same-origin`` and ``none``, typed
    by the user, pass), else ``Origin`` (must name the ``Host`` asked). A form or text body, what
    a page may send without asking first, is refused too, whatever the headers: no endpoint takes
    a body. Clients that are no browser (curl, scripts) send none of these and are not affected.
    """
    if method != "POST":
        return
    site = header("sec-fetch-site")
    if site is not None:
        if site.strip().lower() not in ("same-origin", "none"):
            raise _HTTPError(403, "cross_site", "requests from web pages of other sites cannot change the profiler")
    else:
        origin, host = header("origin"), header("host")
        if origin is not None and (host is None or urlsplit(origin.strip()).netloc.lower() != host.strip().lower()):
            raise _HTTPError(403, "cross_site", "requests from web pages of other origins cannot change the profiler")
    media = (header("content-type") or "").split(";", 1)[0].strip().lower()
    if media in _SIMPLE_BODIES:
        raise _HTTPError(415, "unsupported_media_type", "no endpoint takes a body (form and text bodies are refused)")


def answer(api: _API, method: str, path: str, query_string: str) -> dict[str, Any]:
    """The JSON body for one request that passed :func:`check_access`; raises :class:`_HTTPError`."""
    if not path.startswith(_PREFIX):
        raise _HTTPError(404, "not_found", "unknown path")
    name = path[len(_PREFIX) :]
    details = name.startswith("query-details/")
    if details:
        expected = "GET"
    elif name in api.routes:
        expected = api.routes[name][0]
    else:
        raise _HTTPError(404, "not_found", "unknown path")
    if method != expected:
        raise _HTTPError(405, "method_not_allowed", f"use {expected}", headers={"Allow": expected})
    try:
        query = parse_qs(query_string, keep_blank_values=True, strict_parsing=False, max_num_fields=50)
    except ValueError as exc:  # more than max_num_fields
        raise _HTTPError(400, "bad_query", "too many query parameters") from exc
    try:
        return api.details(name[len("query-details/") :]) if details else api.routes[name][1](query)
    except ProfilerBusy as exc:
        raise _HTTPError(503, "busy", "the workers are being asked for another request, retry later",
                         headers={"Retry-After": "1"}) from exc  # fmt: skip


def respond(
    api: _API, token: str, method: str, path: str, query_string: str, authorization: str | None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, extra headers) of one request, outside the HTTP server (the mount,
    which is served only with a token: on the app's port a proxied request looks local)."""
    try:
        check_access(token, False, path, authorization)
        return 200, answer(api, method, path, query_string), {}
    except _HTTPError as err:
        return err.status, _error_body(err.code, err.message, err.parameter), dict(err.headers or {})


def mount_refusal(
    token: str, method: str, path: str, header: Callable[[str], str | None]
) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """What the mount answers by itself, before anything is relayed: 401 without the token
    (``health`` excepted), 403/415 for what a web page of another origin sends; None: go on."""
    try:
        check_access(token, False, path, header("authorization"))
        check_browser(method, header)
    except _HTTPError as err:
        return err.status, _error_body(err.code, err.message, err.parameter), dict(err.headers or {})
    return None


def make_api(history: HistoryView, slow_threshold_s: float, token_required: bool) -> _API:
    """The endpoints over ``history``, for the mount (the HTTP server makes its own)."""
    return _API(history, slow_threshold_s, token_required)


def _error_body(code: str, message: str, parameter: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if parameter is not None:
        error["parameter"] = parameter
    return {"status": "error", "error": error}


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
        self._send(code, _error_body(reason.lower().replace(" ", "_"), reason))

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
        except _HTTPError as err:
            self._send(err.status, _error_body(err.code, err.message, err.parameter), err.headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a handler bug never reaches the host
            self.server.errors += 1
            try:
                self._send(500, _error_body("internal_error", "internal error"))
            except OSError:
                pass
            internal_error("profiler.http", exc)

    def _route(self) -> None:
        server = self.server
        split = urlsplit(self.path)
        check_access(server.token, self._loopback_host(), split.path, self.headers.get("Authorization"))
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

    def _read_body(self) -> None:
        if "Transfer-Encoding" in self.headers:
            raise _HTTPError(411, "length_required", "chunked request bodies are not accepted")
        raw = self.headers.get("Content-Length", "0").strip() or "0"
        if not raw.isdigit():
            raise _HTTPError(400, "bad_request", "malformed Content-Length")
        length = int(raw)
        if length > MAX_BODY:
            self.close_connection = True
            if length <= _DRAIN:
                self.rfile.read(length)
            raise _HTTPError(413, "body_too_large", f"request bodies are limited to {MAX_BODY} bytes")
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

    def __init__(self, host: str, port: int, family: int, api: _API, token: str | None) -> None:
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


TOKEN_FORMAT = re.compile(r"[\x21-\x7e]{16,}")  # visible ASCII: it travels in a header


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
    server = _Server(host, port, family, _API(history, slow_threshold_s, token is not None), token)
    thread = threading.Thread(target=server.serve, name="otel-dbperf-profiler", daemon=True)
    thread.start()
    return ProfilerServer(host, server.server_port, history, server, thread)
