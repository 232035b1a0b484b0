"""One profiler for every worker of a pre-fork server (gunicorn ``-w N``, ``uvicorn --workers N``).

The master (where ``opentelemetry-instrument`` loads otel-dbperf first) makes a private
directory (``mkdtemp``: mode 0700, named for its pid) and serves the API over a
:class:`MergedHistory`. Each worker keeps its own :class:`QueryHistory`, fed by its own
derivation thread exactly as in a single process (nothing more on the request thread), and
answers the master on a Unix socket in that directory (:class:`WorkerEndpoint`: one thread, one
connection at a time). The master asks the live workers when the API is called, and merges.

- Ids: a worker's entry ``n`` is ``n << PID_BITS | pid`` in the merged view, so
  ``query-details/{id}`` reaches the right worker (the master's own entries likewise).
- A worker that exits normally (``--max-requests``, a graceful restart) writes its totals and
  history to ``<pid>.final.json`` at exit; the master folds them in (at most
  :data:`MAX_RETIRED_FILES` wait, the rest are counted as lost). A worker killed (SIGKILL,
  OOM) loses what it recorded since the API was last called: its totals as last seen are kept.
- Nothing waits on the master: a worker never connects to it, and a slow or absent master
  costs the worker nothing but an idle thread. The master asks every worker at once and waits
  :data:`ASK_TIMEOUT_S` at most for all of them; one that does not answer in time, or answers
  something malformed (NaN, a missing key, a wrong type), is left out of that answer and counted
  as unresponsive. ``health`` asks nobody: it reads the workers' totals as last seen. One
  request asks the workers at a time; another waits for it :data:`ASK_TIMEOUT_S` at most, then
  gets 503.
- A master killed without its exit handlers (``kill -9``, OOM) cannot remove its directory: its
  workers notice that it exited (a pidfd where the system has them, else a look at their parent
  every :data:`PARENT_CHECK_S`), stop answering and remove it; and a master removes, when it
  starts, the directories of dead masters.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import selectors
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

from .. import _forksafe
from .._guard import internal_error
from .._resources import rss_bytes
from .history import (
    MAX_KEYS,
    OTHER,
    ROUTE_MAXES,
    ROUTE_SUMS,
    ProfilerBusy,
    QueryEntry,
    QueryHistory,
    add_route,
    copy_routes,
    slowest_first,
)

_log = logging.getLogger("otel_dbperf")

#: The master's directory and pid, for its workers (set in the master's environment, inherited
#: by forked and spawned workers alike). Internal: not a setting.
HUB_ENV = "_OTEL_DB_PROFILER_HUB"
PID_BITS = 22  # Linux pids are below 2**22
ASK_TIMEOUT_S = 2.0  # the master's deadline for its workers' answers (all asked at once)
PARENT_CHECK_S = 1.0  # without a pidfd, a worker looks whether its master is still there this often
MAX_REQUEST = 16384  # bytes of one request (a mounted API request relayed: its path and query)
MAX_REPLY = 256 << 20  # bytes of one worker's answer (a full history of long statements)
MAX_RETIRED_FILES = 64  # exited workers' hand-over files waiting for the master
_SOCK, _FINAL, _DISABLED = ".sock", ".final.json", "disabled"
_FIELDS = tuple(f.name for f in fields(QueryEntry))
DIRECTORY_PREFIX = "otel-dbperf-profiler-"
_DIRECTORY = re.compile(re.escape(DIRECTORY_PREFIX) + r"([0-9]+)-.+")
_NAMESPACE = "pid-namespace"  # in the directory: the master's pid namespace (a pid means nothing outside it)


def hub_from_env(environ: Mapping[str, str]) -> tuple[int, str] | None:
    """(master pid, directory) when this process's master serves the merged profiler."""
    raw = environ.get(HUB_ENV, "")
    pid, _, directory = raw.partition(":")
    if not pid.isdigit() or not directory:
        return None
    return int(pid), directory


def is_spawned_worker_of(hub: tuple[int, str] | None, argv: Sequence[str]) -> bool:
    """A worker the master started with multiprocessing's spawn (uvicorn ``--workers``), not its
    resource tracker or another helper process."""
    return hub is not None and os.getppid() == hub[0] and "--multiprocessing-fork" in argv


def global_id(local_id: int, pid: int) -> int:
    return local_id << PID_BITS | pid


def _cpu_time_s() -> float:
    times = os.times()
    return times.user + times.system


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _loads(raw: bytes | str) -> Any:
    """JSON as a worker or a hand-over file sends it: NaN and Infinity are malformed."""
    return json.loads(raw, parse_constant=_no_constant)


def _number(value: Any, low: float = -math.inf) -> float:
    if type(value) not in (int, float) or not (math.isfinite(value) and value >= low):
        raise ValueError("not a finite number")
    return float(value)


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError("not a count")
    return int(value)


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("not an object")
    return value


_TOTAL_COUNTS = ("total_queries", "slow_queries", "dropped", "evicted", "kept", "memory_rss_bytes")
_TOTAL_SECONDS = ("total_duration_s", "max_duration_s", "cpu_time_s")


def _checked_totals(totals: Any) -> dict[str, Any]:
    """A worker's totals as sent; raises ValueError/KeyError/TypeError when they are not whole."""
    checked = _object(totals)
    for key in _TOTAL_COUNTS:
        _count(checked[key])
    for key in _TOTAL_SECONDS:
        _number(checked[key], 0.0)
    for key in ("queries_by_table", "queries_by_operation"):
        for value in _object(checked[key]).values():
            _count(value)
    for row in _object(checked.get("requests_by_route", {})).values():
        for name in ROUTE_SUMS + ROUTE_MAXES:
            _number(_object(row).get(name, 0), 0.0)
    return checked


def _field_kinds() -> dict[str, tuple[type, bool]]:
    """Each QueryEntry field's type, and whether it may be None (from its annotation)."""
    kinds = {}
    for f in fields(QueryEntry):
        names = [part.strip() for part in str(f.type).split("|")]
        kinds[f.name] = ({"int": int, "float": float, "str": str, "bool": bool}[names[0]], "None" in names)
    return kinds


_KINDS = _field_kinds()


def _entry(row: Any) -> QueryEntry:
    """A worker's entry as sent (``dataclasses.asdict``), checked field by field, under its merged
    id; raises ValueError/KeyError/TypeError when it is not a whole entry."""
    _object(row)
    for name, (kind, optional) in _KINDS.items():
        value = row[name]
        if value is None and optional:
            continue
        if kind is float:
            _number(value)
        elif type(value) is not kind:
            raise TypeError(f"entry: {name} is not {kind.__name__}")
    entry = QueryEntry(**{name: row[name] for name in _FIELDS})
    if entry.id < 1 or not 0 < entry.pid < 1 << PID_BITS:
        raise ValueError("entry: id or pid out of range")
    return replace(entry, id=global_id(entry.id, entry.pid))


def _entries(rows: Any) -> list[QueryEntry]:
    if not isinstance(rows, list):
        raise TypeError("entries: not a list")
    return [_entry(row) for row in rows]


def _slowest(answer: Any) -> tuple[int, list[QueryEntry]]:
    return _count(_object(answer)["matching"]), _entries(answer["entries"])


def _anything(answer: Any) -> Any:
    return answer


def _row(entry: QueryEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in _FIELDS}


def _totals_with_process(history: QueryHistory) -> dict[str, Any]:
    t = history.totals()
    t["pid"] = os.getpid()
    t["memory_rss_bytes"] = rss_bytes()
    t["cpu_time_s"] = _cpu_time_s()
    return t


# ---------------------------------------------------------------------------------- worker side


class _UnixServer:
    """JSON in, JSON out on a Unix socket: one request per connection, one connection at a time,
    on one daemon thread (only the master or its workers connect: the directory is 0700)."""

    name = "otel-dbperf-profiler-unix"

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self.served = 0

    def start(self) -> None:
        """Bind and serve on a daemon thread; raises OSError if the socket cannot be made."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # a previous process with this pid
            sock.bind(self.path)
            sock.listen(8)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        threading.Thread(target=self._serve, args=(sock,), name=self.name, daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                if not self.wait(sock):
                    return
                conn, _ = sock.accept()
            except (OSError, ValueError):
                return  # closed at exit
            try:
                with conn:
                    self._handle(conn)
            except OSError:
                pass  # the other side gave up (its deadline) or went away
            except Exception as exc:  # noqa: BLE001 - never into the host
                internal_error("profiler.unix", exc)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(ASK_TIMEOUT_S)
        raw = b""
        while not raw.endswith(b"\n") and len(raw) <= MAX_REQUEST:
            chunk = conn.recv(MAX_REQUEST)
            if not chunk:
                break
            raw += chunk
        try:
            request = _loads(raw)
            reply = self.answer(request if isinstance(request, dict) else {})
        except ValueError:
            reply = None
        conn.sendall(json.dumps(reply, separators=(",", ":")).encode())
        self.served += 1

    def answer(self, request: dict[str, Any]) -> Any:
        raise NotImplementedError

    def wait(self, sock: socket.socket) -> bool:
        """Until a connection waits on ``sock`` (True), or this server should stop (False)."""
        return True  # accept() waits


class WorkerEndpoint(_UnixServer):
    """A worker's history, served to the master on ``<dir>/<pid>.sock``."""

    name = "otel-dbperf-profiler-worker"

    def __init__(
        self, history: QueryHistory, directory: str, master_pid: int, flush: Callable[[], None] | None = None
    ) -> None:
        self.history = history
        self.directory = directory
        self.master_pid = master_pid
        self._master_fd: int | None = None
        self.pid = os.getpid()
        self._flush = flush
        super().__init__(os.path.join(directory, f"{self.pid}{_SOCK}"))

    def start(self) -> None:
        if os.path.exists(os.path.join(self.directory, _DISABLED)):
            self.history.enabled = False  # the master's toggle reaches workers started after it
        with contextlib.suppress(AttributeError, OSError):  # Linux 5.3+: readable once the master exits
            self._master_fd = os.pidfd_open(self.master_pid)
            if self._master_gone():  # gone already: that pid may be another process's now
                os.close(self._master_fd)
                self._master_fd = None  # the look at the parent finds it
        super().start()

    def _master_gone(self) -> bool:
        return os.getppid() != self.master_pid  # reparented: the master died

    def wait(self, sock: socket.socket) -> bool:
        """Sleep until the master connects or exits (a pidfd: no polling; else a look every
        :data:`PARENT_CHECK_S`); False once it is gone (the directory is removed then)."""
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ, "socket")
            if self._master_fd is not None:
                selector.register(self._master_fd, selectors.EVENT_READ, "master")
            timeout = None if self._master_fd is not None else PARENT_CHECK_S
            while True:
                ready = {key.data for key, _ in selector.select(timeout)}
                if "master" in ready or self._master_gone():
                    self._orphaned()
                    return False
                if "socket" in ready:
                    return self._sock is sock  # else: closed at exit (shut down to wake this thread)

    def _close(self) -> socket.socket | None:
        """Stop answering (the serving thread wakes and ends); the socket it served, if any."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        master_fd, self._master_fd = self._master_fd, None
        if master_fd is not None:
            with contextlib.suppress(OSError):
                os.close(master_fd)
        return sock

    def _orphaned(self) -> None:
        """The master died without its exit handlers (``kill -9``, OOM): nobody asks any more, and
        its directory would stay behind. Stop answering, and remove the directory."""
        sock = self._close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        # Reparented, so the master has exited (a process's parent changes no other way); a new
        # master with the same pid would make a directory of its own.
        shutil.rmtree(self.directory, ignore_errors=True)
        if sock is not None:
            _log.warning("otel-dbperf: the server's master (pid %d) is gone: worker %d no longer serves the profiler "
                         "and removed its directory", self.master_pid, self.pid)  # fmt: skip

    def answer(self, request: dict[str, Any]) -> Any:
        """The reply to one request of the master (public for tests)."""
        history = self.history
        op = request.get("op")
        if op == "totals":
            return _totals_with_process(history)
        if op == "entries":
            last_n = request.get("last_n")
            return [_row(e) for e in history.entries(last_n if isinstance(last_n, int) else None)]
        if op == "slowest":
            matching, slowest = history.slowest(float(request["threshold"]), int(request["limit"]))
            return {"matching": matching, "entries": [_row(e) for e in slowest]}
        if op == "get":
            entry = history.get(int(request["id"]))
            return None if entry is None else _row(entry)
        if op == "enable":
            history.enabled = bool(request["value"])
            return history.enabled
        if op == "reset":
            history.reset()
            return True
        return None

    def at_exit(self) -> None:
        """Hand the totals and history over to the master, then stop answering (never waits on it)."""
        if os.getpid() != self.pid:
            return  # a child forked by the worker: not ours
        if self._master_gone():
            self._orphaned()  # no master to hand over to
            return
        if self._sock is None:
            return
        try:
            if self._flush is not None:
                self._flush()  # the derivation thread's last spans
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # first: the master no longer asks, so nothing is counted twice
            self._close()
            waiting = sum(name.endswith(_FINAL) for name in os.listdir(self.directory))
            if waiting >= MAX_RETIRED_FILES:
                return  # the master is not collecting: this worker is counted as lost
            final = os.path.join(self.directory, f"{self.pid}{_FINAL}")
            tmp = final + ".tmp"
            with open(tmp, "w", encoding="utf-8") as out:
                json.dump({"totals": _totals_with_process(self.history),
                           "entries": [_row(e) for e in self.history.entries()]}, out)  # fmt: skip
            os.replace(tmp, final)
        except FileNotFoundError:
            pass  # the master has exited and removed its directory
        except Exception as exc:  # noqa: BLE001 - never into the host's exit
            internal_error("profiler.worker_exit", exc)


# ---------------------------------------------------------------------------------- master side


def _ask(path: str, request: dict[str, Any], timeout: float = ASK_TIMEOUT_S) -> Any:
    """One request to a worker, with one deadline for connecting, sending and the whole answer."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("worker did not answer in time")
            sock.settimeout(remaining)
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_REPLY:
                raise OSError("worker answer too large")
            chunks.append(chunk)
    return _loads(b"".join(chunks))


def _ask_each(targets: Sequence[tuple[int, str]], request: dict[str, Any], timeout: float) -> dict[int, Any]:
    """Ask every ``(pid, socket path)`` at once, with one deadline for all: ``{pid: its answer, or
    the exception it came to}`` (an OSError, ValueError for a malformed answer, TimeoutError).

    A Unix socket connects at once or not at all: refused, gone, or its backlog full (a worker that
    has not accepted for a while: BlockingIOError, unresponsive without waiting)."""
    payload = json.dumps(request).encode() + b"\n"
    deadline = time.monotonic() + timeout
    results: dict[int, Any] = {}
    pending: dict[int, list[Any]] = {}  # pid -> [socket, bytes still to send, chunks received, size]
    with selectors.DefaultSelector() as selector:
        try:
            for pid, path in targets:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    sock.connect(path)
                except OSError as exc:
                    sock.close()
                    results[pid] = exc
                    continue
                pending[pid] = [sock, payload, [], 0]
                selector.register(sock, selectors.EVENT_WRITE, pid)
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for key, _ in selector.select(remaining):
                    pid = key.data
                    state = pending[pid]
                    sock = state[0]
                    result: Any
                    try:
                        if state[1]:
                            state[1] = state[1][sock.send(state[1]) :]
                            if not state[1]:
                                selector.modify(sock, selectors.EVENT_READ, pid)
                            continue
                        chunk = sock.recv(1 << 20)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        result = exc
                    else:
                        if chunk:
                            state[2].append(chunk)
                            state[3] += len(chunk)
                            if state[3] <= MAX_REPLY:
                                continue
                            result = OSError("worker answer too large")
                        else:
                            try:
                                result = _loads(b"".join(state[2]))
                            except ValueError as exc:
                                result = exc
                    selector.unregister(sock)
                    sock.close()
                    del pending[pid]
                    results[pid] = result
            for pid in pending:
                results[pid] = TimeoutError("worker did not answer in time")
        finally:
            for state in pending.values():
                state[0].close()
    return results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _add_counts(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for key, value in counts.items():
        if key not in into and len(into) >= MAX_KEYS:
            key = OTHER
        into[key] = into.get(key, 0) + int(value)


def _add_routes(into: dict[str, dict[str, float]], routes: Mapping[str, Mapping[str, float]]) -> None:
    for route, row in routes.items():
        add_route(into, route, row)


#: the totals' keys that hold counts by name (merged name by name, not summed)
_BY_KEY = ("_by_table", "_by_operation", "_by_route")


def _pid_namespace() -> int:
    """This process's pid namespace (0 where /proc does not say): a pid means nothing outside it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def make_directory(parent: str) -> str:
    """The master's private directory in ``parent`` (``mkdtemp``: mode 0700), named for its pid
    (``otel-dbperf-profiler-<pid>-XXXXXXXX``: short, a Unix socket path has ~100 bytes), with its
    pid namespace in a file."""
    directory = tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-", dir=parent)
    with open(os.path.join(directory, _NAMESPACE), "w", encoding="ascii") as out:
        out.write(str(_pid_namespace()))
    return directory


def remove_stale_directories(parent: str) -> int:
    """Remove the directories that masters killed without their exit handlers left in ``parent``:
    this user's, of this pid namespace, named for a pid that is not running (or is this process's:
    its own directory is made after this). Returns how many were removed."""
    namespace, me, uid = str(_pid_namespace()), os.getpid(), os.geteuid()
    removed = 0
    try:
        names = os.listdir(parent)
    except OSError:
        return 0
    for name in names:
        match = _DIRECTORY.fullmatch(name)
        if match is None:
            continue
        pid = int(match[1])
        if pid != me and _alive(pid):
            continue
        path = os.path.join(parent, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
                continue
            with open(os.path.join(path, _NAMESPACE), encoding="ascii") as handle:
                if handle.read(32) != namespace:
                    continue  # another pid namespace's (a container sharing /tmp): not ours to judge
        except (OSError, ValueError):
            continue  # not a directory of this version: left alone
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


class MergedHistory:
    """The master's view: its own history, every live worker's, and what exited workers handed over.

    Quacks like :class:`QueryHistory` for the API (``totals``, ``last_seen_totals``, ``entries``,
    ``slowest``, ``get``, ``enabled``, ``reset``), with the workers' status in ``totals()["workers"]``.
    One request asks the workers at a time (``_asking``); what they said is kept under ``_state``,
    held only briefly, so that ``last_seen_totals`` (health) never waits on a worker.
    """

    def __init__(self, local: QueryHistory, directory: str | None = None) -> None:
        self.local = local
        self.max_history = local.max_history
        self.master_pid = os.getpid()
        if directory is None:
            parent = tempfile.gettempdir()
            remove_stale_directories(parent)
            directory = make_directory(parent)
        self.directory = directory
        self._fanout = _forksafe.lock("profiler.fanout")  # one request asks the workers at a time
        self._state = _forksafe.lock("profiler.merge")  # what they said, and the retired state: held briefly
        self._seen: dict[int, dict[str, Any]] = {}  # pid -> its totals when last asked
        self._retired: deque[QueryEntry] = deque(maxlen=local.max_history)  # exited workers' entries
        self._clear_retired()
        self.unresponsive = 0  # in the last answer
        self.endpoint: WorkerEndpoint | None = None  # in a forked worker: its own

    def _clear_retired(self) -> None:
        self._retired.clear()
        self._retired_totals: dict[str, Any] = {
            "total_queries": 0, "slow_queries": 0, "total_duration_s": 0.0, "max_duration_s": 0.0,
            "queries_by_table": {}, "queries_by_operation": {}, "requests_by_route": {}, "dropped": 0, "evicted": 0,
        }  # fmt: skip
        self.exited = 0  # workers whose hand-over was folded in
        self.killed = 0  # workers gone without one: their totals as last seen are kept
        self.lost_entries = 0  # history entries of killed workers (their totals are kept)

    def environ_value(self) -> str:
        return f"{self.master_pid}:{self.directory}"

    def remove_directory(self) -> None:
        if os.getpid() == self.master_pid:
            shutil.rmtree(self.directory, ignore_errors=True)

    @contextlib.contextmanager
    def _asking(self) -> Iterator[None]:
        """Ask the workers, one request at a time; another waits :data:`ASK_TIMEOUT_S` at most."""
        if not self._fanout.acquire(timeout=ASK_TIMEOUT_S):
            raise ProfilerBusy("another request is asking the workers")
        try:
            yield
        finally:
            self._fanout.release()

    # -- collecting (under _state) -----------------------------------------------------------
    def _fold(self, totals: Mapping[str, Any]) -> None:
        r = self._retired_totals
        for key in ("total_queries", "slow_queries", "dropped", "evicted"):
            r[key] += int(totals.get(key, 0))
        r["total_duration_s"] += float(totals.get("total_duration_s", 0.0))
        r["max_duration_s"] = max(r["max_duration_s"], float(totals.get("max_duration_s", 0.0)))
        _add_counts(r["queries_by_table"], totals.get("queries_by_table", {}))
        _add_counts(r["queries_by_operation"], totals.get("queries_by_operation", {}))
        _add_routes(r["requests_by_route"], totals.get("requests_by_route", {}))

    def _lost(self, pid: int) -> None:
        """A worker gone without a (usable) hand-over: its totals as last seen are kept."""
        seen = self._seen.pop(pid, None)
        if seen is not None:
            self._fold(seen)
            self.lost_entries += int(seen.get("kept", 0))
        self.killed += 1

    def _workers(self) -> tuple[list[tuple[int, str]], list[tuple[int, Any]]]:
        """The live workers' (pid, socket path), and what exited ones left: (pid, (totals, entries)),
        or (pid, None) for a hand-over that cannot be read (call while ``_asking``: files are
        consumed; folded in by :meth:`_retire`, under ``_state``)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return [], []
        retiring: list[tuple[int, Any]] = []
        for name in names:
            if name.endswith(_FINAL) and name[: -len(_FINAL)].isdigit():
                path = os.path.join(self.directory, name)
                try:
                    with open(path, encoding="utf-8") as handle:
                        final = _loads(handle.read())
                    retiring.append((int(name[: -len(_FINAL)]), (_checked_totals(final["totals"]),
                                                                  _entries(final["entries"]))))  # fmt: skip
                except (OSError, ValueError, KeyError, TypeError):
                    retiring.append((int(name[: -len(_FINAL)]), None))  # unreadable or malformed: as if killed
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        live = []
        for name in names:
            pid_text = name[: -len(_SOCK)]
            if name.endswith(_SOCK) and pid_text.isdigit():
                live.append((int(pid_text), os.path.join(self.directory, name)))
        return live, retiring

    def _retire(self, retiring: list[tuple[int, Any]]) -> None:
        for pid, handed_over in retiring:
            if handed_over is None:
                self._lost(pid)
            else:
                totals, entries = handed_over
                self._fold(totals)
                self._retired.extend(entries)
                self.exited += 1
                self._seen.pop(pid, None)

    def _gone(self, pid: int, path: str) -> None:
        # Exiting normally, a worker unlinks its socket before its hand-over: alive or with a
        # hand-over file, it is collected next time.
        if _alive(pid) or os.path.exists(os.path.join(self.directory, f"{pid}{_FINAL}")):
            return
        self._lost(pid)
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _ask_all(self, request: dict[str, Any], check: Callable[[Any], Any]) -> list[tuple[int, Any]]:
        """(pid, answer as ``check`` returns it) of every live worker, all asked at once (call while
        ``_asking``): the dead are accounted for; one that does not answer in time, or whose answer
        ``check`` refuses, is left out and counted unresponsive."""
        workers, retiring = self._workers()
        with self._state:
            self._retire(retiring)
        replies = _ask_each(workers, request, ASK_TIMEOUT_S)
        answers = []
        unresponsive = 0
        gone = []
        for pid, path in workers:
            reply = replies[pid]
            if isinstance(reply, (ConnectionRefusedError, FileNotFoundError)):
                gone.append((pid, path))
            elif isinstance(reply, Exception):
                unresponsive += 1  # a timeout, a full backlog, a broken answer: left out this time
            else:
                try:
                    answers.append((pid, check(reply)))
                except (ValueError, KeyError, TypeError):
                    unresponsive += 1  # malformed: NaN, a missing key, a wrong type
        with self._state:
            for pid, path in gone:
                self._gone(pid, path)
            self.unresponsive = unresponsive
        return answers

    def _merge(self, workers: list[dict[str, Any]]) -> dict[str, Any]:
        """The totals of this process, the retired workers and ``workers`` (call under ``_state``)."""
        everyone = [_totals_with_process(self.local), *workers]
        retired = self._retired_totals
        merged: dict[str, Any] = {key: value for key, value in retired.items() if not key.endswith(_BY_KEY)}
        merged["queries_by_table"] = dict(self._retired_totals["queries_by_table"])
        merged["queries_by_operation"] = dict(self._retired_totals["queries_by_operation"])
        merged["requests_by_route"] = copy_routes(self._retired_totals["requests_by_route"])
        merged["kept"] = len(self._retired)
        merged["memory_rss_bytes"] = 0
        merged["cpu_time_s"] = 0.0
        for t in everyone:
            for key in ("total_queries", "slow_queries", "dropped", "evicted", "kept", "memory_rss_bytes"):
                merged[key] += int(t[key])
            merged["total_duration_s"] += float(t["total_duration_s"])
            merged["cpu_time_s"] += float(t["cpu_time_s"])
            merged["max_duration_s"] = max(merged["max_duration_s"], float(t["max_duration_s"]))
            _add_counts(merged["queries_by_table"], t["queries_by_table"])
            _add_counts(merged["queries_by_operation"], t["queries_by_operation"])
            _add_routes(merged["requests_by_route"], t.get("requests_by_route", {}))
        merged["enabled"] = self.local.enabled
        merged["max_history"] = self.max_history
        return merged

    # -- the HistoryView the API reads ------------------------------------------------------
    def totals(self) -> dict[str, Any]:
        with self._asking():
            answers = self._ask_all({"op": "totals"}, _checked_totals)
            with self._state:
                for pid, t in answers:
                    self._seen[pid] = t
                merged = self._merge([t for _, t in answers])
                merged["workers"] = {
                    "live": len(answers),
                    "pids": sorted(pid for pid, _ in answers),
                    "unresponsive": self.unresponsive,
                    "exited": self.exited,
                    "killed": self.killed,
                    "lost_entries": self.lost_entries,
                }
            return merged

    def last_seen_totals(self) -> dict[str, Any]:
        """The totals without asking anyone (health): the workers' as they were last seen."""
        with self._state:
            return self._merge(list(self._seen.values()))

    def _entries_of(self, request: dict[str, Any]) -> list[QueryEntry]:
        answers = self._ask_all(request, _entries)  # first: it folds in what exited workers left
        entries = [replace(e, id=global_id(e.id, e.pid)) for e in self.local.entries(request.get("last_n"))]
        with self._state:
            entries.extend(self._retired)
        for _, rows in answers:
            entries.extend(rows)
        return entries

    def entries(self, last_n: int | None = None) -> list[QueryEntry]:
        """The latest ``last_n`` queries of all processes, oldest first (by end time)."""
        with self._asking():
            entries = self._entries_of({"op": "entries", "last_n": last_n})
        entries.sort(key=lambda e: e.timestamp)
        return entries if last_n is None else entries[-last_n:]

    def slowest(self, threshold_s: float, limit: int) -> tuple[int, list[QueryEntry]]:
        with self._asking():
            answers = self._ask_all({"op": "slowest", "threshold": threshold_s, "limit": limit}, _slowest)
            matching, candidates = self.local.slowest(threshold_s, limit)
            candidates = [replace(e, id=global_id(e.id, e.pid)) for e in candidates]
            with self._state:
                retired = [e for e in self._retired if e.duration_s >= threshold_s]
            matching += len(retired)
            candidates.extend(retired)
            for _, (count, rows) in answers:
                matching += count
                candidates.extend(rows)
        return matching, slowest_first(candidates)[:limit]

    def get(self, entry_id: int) -> QueryEntry | None:
        pid, local_id = entry_id & ((1 << PID_BITS) - 1), entry_id >> PID_BITS
        if local_id < 1:
            return None
        if pid == self.master_pid:
            entry = self.local.get(local_id)
            return None if entry is None else replace(entry, id=entry_id)
        with self._state:
            for retired in self._retired:
                if retired.id == entry_id:
                    return retired
        path = os.path.join(self.directory, f"{pid}{_SOCK}")
        if not os.path.exists(path):
            return None
        with self._asking():
            row = _ask_each([(pid, path)], {"op": "get", "id": local_id}, ASK_TIMEOUT_S)[pid]
        if row is None or isinstance(row, Exception):
            return None
        try:
            found = _entry(row)
        except (ValueError, KeyError, TypeError):
            return None  # malformed: as if it did not answer
        return found if found.id == entry_id else None

    @property
    def enabled(self) -> bool:
        return self.local.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        with self._asking():
            self.local.enabled = value
            marker = os.path.join(self.directory, _DISABLED)
            if value:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker)
            else:
                with open(marker, "w", encoding="utf-8"):
                    pass  # workers started later begin disabled too
            self._ask_all({"op": "enable", "value": value}, _anything)

    def reset(self) -> None:
        with self._asking():
            self.local.reset()
            self._ask_all({"op": "reset"}, _anything)
            with self._state:
                self._seen.clear()
                self._clear_retired()


RELAY = "master.sock"  # the master's socket for API requests mounted on the workers' port
RELAY_THREADS = 8  # relayed requests the master answers at once (more: 503 at once)
# a relayed request waits for another's fan-out (ASK_TIMEOUT_S at most), then its own
RELAY_TIMEOUT_S = 2 * ASK_TIMEOUT_S + 1.0
_RELAY_BUSY = {
    "status": 503,
    "body": {"status": "error", "error": {"code": "busy", "message": "too many requests at once, retry later"}},
    "headers": {"Retry-After": "1"},
}


class MountRelay(_UnixServer):
    """In the master: answers the API requests its workers receive on the app's port
    (``DBPERF_PROFILER_MOUNT``) with the merged view, each on a thread of its own (at most
    :data:`RELAY_THREADS`): a request that asks no worker (health) never queues behind one that does."""

    name = "otel-dbperf-profiler-relay"

    def __init__(self, directory: str, respond: Callable[..., tuple[int, dict[str, Any], dict[str, str]]]) -> None:
        self._respond = respond
        self._slots = _forksafe.bounded_semaphore("profiler.relay", RELAY_THREADS)
        super().__init__(os.path.join(directory, RELAY))

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed at exit
            if not self._slots.acquire(blocking=False):
                with conn, contextlib.suppress(OSError):
                    conn.settimeout(ASK_TIMEOUT_S)
                    conn.sendall(json.dumps(_RELAY_BUSY).encode())
                continue
            try:
                threading.Thread(target=self._one, args=(conn,), name=self.name, daemon=True).start()
            except BaseException:
                self._slots.release()
                conn.close()
                raise

    def _one(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._handle(conn)
        except OSError:
            pass  # the worker gave up (its deadline) or went away
        except Exception as exc:  # noqa: BLE001 - never into the host
            internal_error("profiler.relay", exc)
        finally:
            self._slots.release()

    def answer(self, request: dict[str, Any]) -> Any:
        status, body, headers = self._respond(
            str(request["method"]),
            str(request["path"]),
            str(request["query"]),
            request["authorization"] if isinstance(request["authorization"], str) else None,
        )
        return {"status": status, "body": body, "headers": headers}


def relay(directory: str, request: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A worker's mounted API request, answered by the master (raises OSError/ValueError if it cannot)."""
    reply = _ask(os.path.join(directory, RELAY), request, RELAY_TIMEOUT_S)
    return int(reply["status"]), dict(reply["body"]), {str(k): str(v) for k, v in reply["headers"].items()}


def start_worker(
    history: QueryHistory, directory: str, master_pid: int, flush: Callable[[], None] | None = None
) -> WorkerEndpoint:
    """Serve this worker's history to its master (see :class:`WorkerEndpoint`) until exit, or
    until the master is gone."""
    endpoint = WorkerEndpoint(history, directory, master_pid, flush)
    endpoint.start()
    atexit.register(endpoint.at_exit)
    return endpoint
