"""The profiler API's start-up: its own HTTP server, the mount on the app's port, and under a
pre-fork server the master's merged view of its workers (``DBPERF_PROFILER_*``; docs/profiler.md).

The composition root calls :func:`start_profiler` once, from the derivation thread's set-up.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from .. import _forksafe, _prefork
from .._pipeline.record import Thresholds
from .._startup_log import startup_warning
from ..settings import Settings
from . import hub as profiler_hub
from .api import TOKEN_FORMAT, make_api, respond
from .history import QueryHistory
from .mount import Mount, install
from .server import start
from .sink import HistorySink

_log = logging.getLogger("otel_dbperf")


def _no_drain() -> None:
    return None


class _State:
    """What the start-up made in this process (a forked worker takes the master's over)."""

    def __init__(self) -> None:
        self.server: Any = None  # the profiler API's own HTTP server (a ProfilerServer)
        self.hub: Any = None  # under a pre-fork server's master: the merged history of its workers
        self.relay: Any = None  # the master's relay for the workers' mounts
        self.worker: Any = None  # in a worker: what answers the master
        self.mount: Mount | None = None
        self.drain: Callable[[], None] = _no_drain  # the derivation thread's drain, before a worker answers


_state = _State()


#: set once the start-up said that the mount needs a token (inherited: said once per process tree)
_MOUNT_REFUSED_ENV = "_OTEL_DB_PROFILER_MOUNT_REFUSED"


def start_profiler(settings: Settings, thresholds: Thresholds, drain: Callable[[], None]) -> HistorySink | None:
    """The profiler API's history sink, or None when it cannot start (one warning says why).

    Under a pre-fork server the master serves the merged view of its workers, each of which
    answers it on a Unix socket (see :mod:`.hub`). ``DBPERF_PROFILER_MOUNT``
    serves the API on the app's port too (see :mod:`.mount`).
    """
    _state.drain = drain
    token = settings.profiler_token or None
    if token is not None and not TOKEN_FORMAT.fullmatch(token):
        # The message never contains the token itself.
        startup_warning("otel-dbperf: the profiler API is NOT started: DBPERF_PROFILER_TOKEN must be at least "
                        "16 visible ASCII characters (no spaces)")  # fmt: skip
        return None
    mount = settings.profiler_mount
    if mount and token is None:
        # Behind a reverse proxy (nginx with proxy_pass alone) every request to the app's port
        # comes from loopback and names a loopback host: no request can be told to be local.
        if not os.environ.get(_MOUNT_REFUSED_ENV):  # said once per process tree (spawned workers...)
            os.environ[_MOUNT_REFUSED_ENV] = "1"
            startup_warning("otel-dbperf: the profiler API is NOT mounted on the app's port "
                            "(DBPERF_PROFILER_MOUNT=%s): it needs DBPERF_PROFILER_TOKEN, since behind a reverse "
                            "proxy every request looks local", mount)  # fmt: skip
        mount = ""
        if not settings.profiler_addr:
            return None
    server_name = _prefork.prefork_server(os.environ, sys.argv)
    master = profiler_hub.hub_from_env(os.environ)
    history = QueryHistory(settings.profiler_max_history)
    if not server_name and master is not None and os.getppid() == master[0]:
        if not profiler_hub.is_spawned_worker_of(master, sys.argv):
            return None  # a helper of the master (multiprocessing's resource tracker): not a worker
        # uvicorn --workers: a spawned worker
        try:
            _state.worker = profiler_hub.start_worker(history, master[1], master[0], _state.drain)
        except OSError as exc:
            startup_warning("otel-dbperf: this worker's queries are NOT in the profiler API: %s", exc)
            return None
        if mount and token is not None:
            _mount(mount, token, _relay_to(master[1]))
        return HistorySink(history, settings.sanitize_statements, thresholds, settings.resource_samples != "off")
    view: Any = history
    if server_name:
        merged = profiler_hub.MergedHistory(history)
        os.environ[profiler_hub.HUB_ENV] = merged.environ_value()  # for the workers, forked or spawned
        atexit.register(merged.remove_directory)
        _state.hub = view = merged
        _forksafe.register(_profiler_after_fork_in_child)
    threshold_s = thresholds.slow_s
    serving = False
    if settings.profiler_addr:
        try:
            server = start(settings.profiler_addr, token, view, threshold_s)
        except (ValueError, OSError) as exc:
            startup_warning("otel-dbperf: the profiler API is NOT started (DBPERF_PROFILER_ADDR=%s): %s",
                            settings.profiler_addr, exc)  # fmt: skip
        else:
            serving = True
            _state.server = server
            _log.info(
                "otel-dbperf: profiler API on %s%s", server.url, f" (every {server_name} worker)" * bool(server_name)
            )
    if mount and token is not None:
        api = make_api(view, threshold_s, True)
        mount_token = token

        def answer(method: str, path: str, query: str, authorization: str | None) -> Any:
            return respond(api, mount_token, method, path, query, authorization)

        if server_name:  # the workers serve the app's port: they relay to the master
            try:
                relay = profiler_hub.MountRelay(view.directory, answer)
                relay.start()
                _state.relay = relay
                serving = _mount(mount, token, _relay_to(view.directory)) or serving
            except OSError as exc:
                startup_warning("otel-dbperf: the profiler API is NOT mounted (DBPERF_PROFILER_MOUNT=%s): %s",
                                mount, exc)  # fmt: skip
        else:
            serving = _mount(mount, token, answer) or serving
    if not serving:
        if server_name:
            os.environ.pop(profiler_hub.HUB_ENV, None)
            _state.hub = None
        return None
    return HistorySink(history, settings.sanitize_statements, thresholds, settings.resource_samples != "off")


def _relay_to(directory: str) -> Any:
    def answer(method: str, path: str, query: str, authorization: str | None) -> Any:
        request = {"method": method, "path": path, "query": query, "authorization": authorization}
        return profiler_hub.relay(directory, request)

    return answer


def _mount(prefix: str, token: str, answer: Any) -> bool:
    mount = Mount(prefix, token, answer)
    servers = install(mount)
    if not servers:
        startup_warning(
            "otel-dbperf: the profiler API is NOT mounted (DBPERF_PROFILER_MOUNT=%s): neither gunicorn "
            "nor uvicorn is installed (the mount wraps the app they serve)",
            prefix,
        )
        return False
    _state.mount = mount
    return True


def _profiler_after_fork_in_child() -> None:
    """A worker forked by the master (gunicorn): serve this worker's history to the master."""
    merged = _state.hub
    if merged is None or os.getppid() != merged.master_pid:
        return  # not a worker of ours (a child of a worker, ...)
    server, _state.server = _state.server, None
    if server is not None:
        server._server.server_close()  # noqa: SLF001 - the master's sockets: not the worker's
    relay, _state.relay = _state.relay, None
    if relay is not None and relay._sock is not None:  # noqa: SLF001
        relay._sock.close()  # noqa: SLF001 - likewise
    _state.hub = None
    merged.local.reset()  # the master's own queries are the master's
    try:
        _state.worker = profiler_hub.start_worker(merged.local, merged.directory, merged.master_pid, _state.drain)
    except OSError as exc:
        _log.warning("otel-dbperf: worker %d's queries are NOT in the profiler API: %s", os.getpid(), exc)
