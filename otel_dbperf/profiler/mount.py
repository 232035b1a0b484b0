"""``DBPERF_PROFILER_MOUNT``: the profiler API on the application's own port, no code change.

The server's application object is wrapped from outside (gunicorn's ``Worker.load_wsgi``,
uvicorn's ``Config.load``), so requests under the mount path are answered before they reach
the app and its instrumentation: they make no spans, metrics or roll-ups. Every other request
goes to the app untouched. Under a pre-fork server a worker relays the request to the master,
which answers with every worker's queries (see :mod:`.hub`).

Tokens: with ``DBPERF_PROFILER_TOKEN`` every endpoint but ``health`` needs it. Without one, only
requests from a loopback peer, naming a loopback host, and not forwarded by a proxy (no
``Forwarded``, ``X-Forwarded-For`` or ``X-Real-IP``) are answered: on the app's port the API is
otherwise as public as the app.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any

from .._guard import internal_error

_FORWARDED = ("forwarded", "x-forwarded-for", "x-real-ip")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_MAX_TARGET = 8192  # path and query relayed to the master
_API_PREFIX = "/profiler"

Responder = Callable[[bool, str, str, str, "str | None"], tuple[int, dict[str, Any], dict[str, str]]]


def _loopback_peer(peer: str | None) -> bool:
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a Unix socket or a name: not known to be local


def _loopback_host(host: str | None) -> bool:
    if host is None:
        return False
    host = host.strip().lower()
    if host.startswith("["):
        name = host[: host.find("]") + 1]
    else:
        name = host.split(":", 1)[0]
    return name in _LOOPBACK_HOSTS


def _status_line(status: int) -> str:
    from http import HTTPStatus

    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


class Mount:
    """The API under ``prefix`` on the app's port; ``respond(open_ok, method, path, query, authorization)``
    answers (in this process, or relayed to the master)."""

    def __init__(self, prefix: str, respond: Responder) -> None:
        self.prefix = prefix
        self._respond = respond
        self.served = 0

    def handles(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def answer(
        self, method: str, path: str, query: str, headers: dict[str, str], peer: str | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) for one request under the mount (``headers``: lower-case names)."""
        self.served += 1
        open_ok = (
            _loopback_peer(peer)
            and _loopback_host(headers.get("host"))
            and not any(name in headers for name in _FORWARDED)
        )
        api_path = _API_PREFIX + path[len(self.prefix) :]
        extra: dict[str, str]
        if len(api_path) + len(query) > _MAX_TARGET:
            status, body, extra = 414, _error("uri_too_long", "request target too long"), {}
        else:
            try:
                status, body, extra = self._respond(open_ok, method, api_path, query, headers.get("authorization"))
            except (OSError, ValueError, KeyError, TypeError):
                body = _error("unavailable", "the profiler is not reachable, retry later")
                status, extra = 503, {"Retry-After": "1"}
        payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        out = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *extra.items(),
        ]
        return status, out, b"" if method == "HEAD" else payload

    # -- WSGI ---------------------------------------------------------------------------------
    def wsgi(self, app: Any) -> Any:
        mount = self

        def profiler_mount(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            path = environ.get("PATH_INFO") or ""
            if not mount.handles(path):
                return app(environ, start_response)  # type: ignore[no-any-return]
            headers = {
                key[5:].replace("_", "-").lower(): str(value)
                for key, value in environ.items()
                if key.startswith("HTTP_")
            }
            status, out, body = mount.answer(
                str(environ.get("REQUEST_METHOD", "GET")),
                path,
                str(environ.get("QUERY_STRING", "")),
                headers,
                environ.get("REMOTE_ADDR"),
            )
            start_response(_status_line(status), out)
            return [body]

        profiler_mount.__wrapped__ = app  # type: ignore[attr-defined]
        return profiler_mount

    # -- ASGI ---------------------------------------------------------------------------------
    def asgi(self, app: Any) -> Any:
        mount = self

        async def profiler_mount(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope.get("type") != "http" or not mount.handles(scope.get("path", "")):
                await app(scope, receive, send)
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
            client = scope.get("client")
            loop = asyncio.get_running_loop()
            # off the event loop: under a pre-fork server the master asks every worker first
            status, out, body = await loop.run_in_executor(
                None,
                mount.answer,
                scope.get("method", "GET"),
                scope["path"],
                scope.get("query_string", b"").decode("latin-1"),
                headers,
                client[0] if client else None,
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in out],
                }
            )
            await send({"type": "http.response.body", "body": body})

        profiler_mount.__wrapped__ = app  # type: ignore[attr-defined]
        return profiler_mount


def _error(code: str, message: str) -> dict[str, Any]:
    return {"status": "error", "error": {"code": code, "message": message}}


def install(mount: Mount) -> list[str]:
    """Wrap the apps gunicorn and uvicorn serve from now on; returns the servers patched."""
    patched = []
    try:
        from gunicorn.workers import base
    except ImportError:
        pass
    else:
        _patch_gunicorn(base.Worker, mount)
        patched.append("gunicorn")
    try:
        from uvicorn import config
    except ImportError:
        pass
    else:
        _patch_uvicorn(config.Config, mount)
        patched.append("uvicorn")
    return patched


def _patch_gunicorn(worker_class: Any, mount: Mount) -> None:
    original = worker_class.load_wsgi
    if getattr(original, "_dbperf_mount", False):
        return

    def load_wsgi(self: Any) -> None:
        original(self)
        try:
            if type(self).__module__.startswith("uvicorn"):
                return  # an ASGI worker: uvicorn's Config.load wraps it
            self.wsgi = mount.wsgi(self.wsgi)
        except Exception as exc:  # noqa: BLE001 - the app is served without the mount
            internal_error("profiler.mount", exc)

    load_wsgi._dbperf_mount = True  # type: ignore[attr-defined]
    worker_class.load_wsgi = load_wsgi


def _patch_uvicorn(config_class: Any, mount: Mount) -> None:
    original = config_class.load
    if getattr(original, "_dbperf_mount", False):
        return

    def load(self: Any) -> None:
        original(self)
        try:
            self.loaded_app = mount.asgi(self.loaded_app)
        except Exception as exc:  # noqa: BLE001 - the app is served without the mount
            internal_error("profiler.mount", exc)

    load._dbperf_mount = True  # type: ignore[attr-defined]
    config_class.load = load
