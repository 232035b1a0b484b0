"""``DBPERF_PROFILER_MOUNT``: the profiler API on the application's own port, no code change.

The server's application object is wrapped from outside (gunicorn's ``Worker.load_wsgi``,
uvicorn's ``Config.load``), so requests under the mount path are answered before they reach
the app and its instrumentation: they make no spans, metrics or roll-ups. Every other request
goes to the app untouched. Under a pre-fork server a worker relays the request to the master,
which answers with every worker's queries (see :mod:`.hub`).

Tokens: the mount is served only with ``DBPERF_PROFILER_TOKEN`` (without one it is not
installed, and the start-up says so): on the app's port a request forwarded by a reverse proxy
(nginx with ``proxy_pass`` alone sends a loopback ``Host`` and no forwarding header) cannot be
told from a local one. Every endpoint but ``health`` needs the token, checked here: a request
without it is answered by the worker and never reaches the master. ``toggle`` and ``reset``
refuse what a web page of another origin sends (:func:`.server.check_browser`).

Holding the app: a request that makes the master ask the workers holds at most one thread of
this process at a time (another gets 503 at once; ``health`` asks nobody and is not limited).
Under ASGI the relay runs on the mount's own two threads, never on the event loop or the
loop's default executor.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import _forksafe
from .._guard import internal_error
from .api import mount_refusal

_MAX_TARGET = 8192  # path and query relayed to the master
_API_PREFIX = "/profiler"
_ASKS_NOBODY = ("/profiler/health", "/profiler/openapi.json")  # answered without asking the workers

Reply = tuple[int, dict[str, Any], dict[str, str]]
Responder = Callable[[str, str, str, "str | None"], Reply]


def _status_line(status: int) -> str:
    from http import HTTPStatus

    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


class Mount:
    """The API under ``prefix`` on the app's port, with ``token``; ``respond(method, path, query,
    authorization)`` answers (in this process, or relayed to the master)."""

    def __init__(self, prefix: str, token: str, respond: Responder) -> None:
        self.prefix = prefix
        self._token = token
        self._respond = respond
        self.served = 0
        self._asking = _forksafe.bounded_semaphore("profiler.mount", 1)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        _forksafe.register(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._executor = None  # the parent's threads are not in the child

    def handles(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def _admit(self, method: str, path: str, query: str, headers: dict[str, str]) -> tuple[str, Reply | None, bool]:
        """(the API path, the answer when it is given without the profiler, whether the one slot
        for asking the workers was taken: :meth:`_forward` gives it back)."""
        self.served += 1
        api_path = _API_PREFIX + path[len(self.prefix) :]
        if len(api_path) + len(query) > _MAX_TARGET:
            return api_path, (414, _error("uri_too_long", "request target too long"), {}), False
        refused = mount_refusal(self._token, method, api_path, headers.get)
        if refused is not None:
            return api_path, refused, False
        if api_path in _ASKS_NOBODY:
            return api_path, None, False
        if not self._asking.acquire(blocking=False):
            busy = _error("busy", "this worker is already waiting on the profiler, retry later")
            return api_path, (503, busy, {"Retry-After": "1"}), False
        return api_path, None, True

    def _forward(self, method: str, api_path: str, query: str, headers: dict[str, str], slot: bool) -> Reply:
        try:
            return self._respond(method, api_path, query, headers.get("authorization"))
        except (OSError, ValueError, KeyError, TypeError):
            return 503, _error("unavailable", "the profiler is not reachable, retry later"), {"Retry-After": "1"}
        finally:
            if slot:
                self._asking.release()

    @staticmethod
    def _render(method: str, reply: Reply) -> tuple[int, list[tuple[str, str]], bytes]:
        status, body, extra = reply
        try:
            payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        except ValueError:
            status, extra = 503, {"Retry-After": "1"}
            payload = json.dumps(_error("unavailable", "the profiler is not reachable, retry later")).encode()
        out = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *extra.items(),
        ]
        return status, out, b"" if method == "HEAD" else payload

    def answer(
        self, method: str, path: str, query: str, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) for one request under the mount (``headers``: lower-case names)."""
        api_path, reply, slot = self._admit(method, path, query, headers)
        if reply is None:
            reply = self._forward(method, api_path, query, headers, slot)
        return self._render(method, reply)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None or self._executor_pid != os.getpid():
            self._executor = ThreadPoolExecutor(2, thread_name_prefix="otel-dbperf-mount")
            self._executor_pid = os.getpid()
        return self._executor

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
                str(environ.get("REQUEST_METHOD", "GET")), path, str(environ.get("QUERY_STRING", "")), headers
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
            method = scope.get("method", "GET")
            query = scope.get("query_string", b"").decode("latin-1")
            api_path, reply, slot = mount._admit(method, scope["path"], query, headers)  # noqa: SLF001
            if reply is None:
                # off the event loop, on the mount's own threads: the master may ask every worker first
                try:
                    pending = asyncio.get_running_loop().run_in_executor(
                        mount._pool(),
                        mount._forward,
                        method,
                        api_path,
                        query,
                        headers,
                        slot,  # noqa: SLF001
                    )
                except BaseException:
                    if slot:
                        mount._asking.release()  # noqa: SLF001
                    raise
                reply = await pending
            status, out, body = mount._render(method, reply)  # noqa: SLF001
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
