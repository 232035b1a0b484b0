"""One profiler for every worker of a pre-fork server (gunicorn ``-w N``, ``uvicorn --workers N``).

The master (where ``opentelemetry-instrument`` loads otel-dbperf first) makes a private
directory (``mkdtemp``: mode 0700) and serves the API over a :class:`MergedHistory`. Each
worker keeps its own :class:`QueryHistory`, fed by its own derivation thread exactly as in a
single process (nothing more on the request thread), and answers the master on a Unix socket
in that directory (:class:`WorkerEndpoint`: one thread, one connection at a time). The master
asks the live workers when the API is called, each with a short deadline, and merges.

- Ids: a worker's entry ``n`` is ``n << PID_BITS | pid`` in the merged view, so
  ``query-details/{id}`` reaches the right worker (the master's own entries likewise).
- A worker that exits normally (``--max-requests``, a graceful restart) writes its totals and
  history to ``<pid>.final.json`` at exit; the master folds them in (at most
  :data:`MAX_RETIRED_FILES` wait, the rest are counted as lost). A worker killed (SIGKILL,
  OOM) loses what it recorded since the API was last called: its totals as last seen are kept.
- Nothing waits on the master: a worker never connects to it, and a slow or absent master
  costs the worker nothing but an idle thread. The master never waits on a worker longer
  than :data:`ASK_TIMEOUT_S`; one that does not answer in time is left out of that answer
  and counted as unresponsive.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

from .. import _forksafe
from .._guard import internal_error
from .._resources import rss_bytes
from .history import MAX_KEYS, OTHER, QueryEntry, QueryHistory, add_route, copy_routes, slowest_first

#: The master's directory and pid, for its workers (set in the master's environment, inherited
#: by forked and spawned workers alike). Internal: not a setting.
HUB_ENV = "_OTEL_DB_PROFILER_HUB"
PID_BITS = 22  # Linux pids are below 2**22
ASK_TIMEOUT_S = 2.0  # the master's deadline for one worker's answer
MAX_REQUEST = 16384  # bytes of one request (a mounted API request relayed: its path and query)
MAX_REPLY = 256 << 20  # bytes of one worker's answer (a full history of long statements)
MAX_RETIRED_FILES = 64  # exited workers' hand-over files waiting for the master
_SOCK, _FINAL, _DISABLED = ".sock", ".final.json", "disabled"
_FIELDS = tuple(f.name for f in fields(QueryEntry))


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


def _entry(row: dict[str, Any]) -> QueryEntry:
    """A worker's entry as sent (``dataclasses.asdict``), under its merged id."""
    entry = QueryEntry(**{name: row[name] for name in _FIELDS})
    return replace(entry, id=global_id(entry.id, entry.pid))


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
                conn, _ = sock.accept()
            except OSError:
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
            request = json.loads(raw)
            reply = self.answer(request if isinstance(request, dict) else {})
        except ValueError:
            reply = None
        conn.sendall(json.dumps(reply, separators=(",", ":")).encode())
        self.served += 1

    def answer(self, request: dict[str, Any]) -> Any:
        raise NotImplementedError


class WorkerEndpoint(_UnixServer):
    """A worker's history, served to the master on ``<dir>/<pid>.sock``."""

    name = "otel-dbperf-profiler-worker"

    def __init__(self, history: QueryHistory, directory: str, flush: Callable[[], None] | None = None) -> None:
        self.history = history
        self.directory = directory
        self.pid = os.getpid()
        self._flush = flush
        super().__init__(os.path.join(directory, f"{self.pid}{_SOCK}"))

    def start(self) -> None:
        if os.path.exists(os.path.join(self.directory, _DISABLED)):
            self.history.enabled = False  # the master's toggle reaches workers started after it
        super().start()

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
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if self._flush is not None:
                self._flush()  # the derivation thread's last spans
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # first: the master no longer asks, so nothing is counted twice
            sock.close()
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
    return json.loads(b"".join(chunks))


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


class MergedHistory:
    """The master's view: its own history, every live worker's, and what exited workers handed over.

    Quacks like :class:`QueryHistory` for the API (``totals``, ``entries``, ``slowest``, ``get``,
    ``enabled``, ``reset``), with the workers' status in ``totals()["workers"]``.
    """

    def __init__(self, local: QueryHistory, directory: str | None = None) -> None:
        self.local = local
        self.max_history = local.max_history
        self.master_pid = os.getpid()
        self.directory = directory or tempfile.mkdtemp(prefix="otel-dbperf-profiler-")  # mode 0700
        self._lock = _forksafe.lock("profiler.merge")  # one merge at a time: the retired state is shared
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

    # -- collecting ------------------------------------------------------------------------
    def _fold(self, totals: Mapping[str, Any]) -> None:
        r = self._retired_totals
        for key in ("total_queries", "slow_queries", "dropped", "evicted"):
            r[key] += int(totals.get(key, 0))
        r["total_duration_s"] += float(totals.get("total_duration_s", 0.0))
        r["max_duration_s"] = max(r["max_duration_s"], float(totals.get("max_duration_s", 0.0)))
        _add_counts(r["queries_by_table"], totals.get("queries_by_table", {}))
        _add_counts(r["queries_by_operation"], totals.get("queries_by_operation", {}))
        _add_routes(r["requests_by_route"], totals.get("requests_by_route", {}))

    def _workers(self) -> list[tuple[int, str]]:
        """The live workers' (pid, socket path), after folding in what exited ones left."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        for name in names:
            if name.endswith(_FINAL) and name[: -len(_FINAL)].isdigit():
                path = os.path.join(self.directory, name)
                try:
                    with open(path, encoding="utf-8") as handle:
                        final = json.load(handle)
                    self._fold(final["totals"])
                    self._retired.extend(_entry(row) for row in final["entries"])
                    self.exited += 1
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    internal_error("profiler.hand_over", exc)
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                self._seen.pop(int(name[: -len(_FINAL)]), None)
        live = []
        for name in names:
            pid_text = name[: -len(_SOCK)]
            if name.endswith(_SOCK) and pid_text.isdigit():
                live.append((int(pid_text), os.path.join(self.directory, name)))
        return live

    def _ask_all(self, request: dict[str, Any]) -> list[tuple[int, Any]]:
        """(pid, answer) of every live worker; the dead are accounted for, the slow left out."""
        answers = []
        unresponsive = 0
        for pid, path in self._workers():
            try:
                answers.append((pid, _ask(path, request)))
            except (ConnectionRefusedError, FileNotFoundError):
                # Gone. Exiting normally, it unlinked its socket before its hand-over: alive
                # or with a hand-over file, it is collected next time.
                if _alive(pid) or os.path.exists(os.path.join(self.directory, f"{pid}{_FINAL}")):
                    continue
                seen = self._seen.pop(pid, None)
                if seen is not None:
                    self._fold(seen)
                    self.lost_entries += int(seen.get("kept", 0))
                self.killed += 1
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except (OSError, ValueError):  # a timeout, a broken answer: left out this time
                unresponsive += 1
        self.unresponsive = unresponsive
        return answers

    # -- the HistoryView the API reads ------------------------------------------------------
    def totals(self) -> dict[str, Any]:
        with self._lock:
            answers = self._ask_all({"op": "totals"})
            for pid, t in answers:
                self._seen[pid] = t
            local = _totals_with_process(self.local)
            everyone = [local] + [t for _, t in answers]
            merged: dict[str, Any] = {
                key: value for key, value in self._retired_totals.items() if not key.endswith(_BY_KEY)
            }
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
            merged["workers"] = {
                "live": len(answers),
                "pids": sorted(pid for pid, _ in answers),
                "unresponsive": self.unresponsive,
                "exited": self.exited,
                "killed": self.killed,
                "lost_entries": self.lost_entries,
            }
            return merged

    def _entries_of(self, request: dict[str, Any]) -> list[QueryEntry]:
        entries = [replace(e, id=global_id(e.id, e.pid)) for e in self.local.entries(request.get("last_n"))]
        entries.extend(self._retired)
        for _, rows in self._ask_all(request):
            entries.extend(_entry(row) for row in rows)
        return entries

    def entries(self, last_n: int | None = None) -> list[QueryEntry]:
        """The latest ``last_n`` queries of all processes, oldest first (by end time)."""
        with self._lock:
            entries = self._entries_of({"op": "entries", "last_n": last_n})
        entries.sort(key=lambda e: e.timestamp)
        return entries if last_n is None else entries[-last_n:]

    def slowest(self, threshold_s: float, limit: int) -> tuple[int, list[QueryEntry]]:
        with self._lock:
            matching, candidates = self.local.slowest(threshold_s, limit)
            candidates = [replace(e, id=global_id(e.id, e.pid)) for e in candidates]
            retired = [e for e in self._retired if e.duration_s >= threshold_s]
            matching += len(retired)
            candidates.extend(retired)
            for _, answer in self._ask_all({"op": "slowest", "threshold": threshold_s, "limit": limit}):
                matching += int(answer["matching"])
                candidates.extend(_entry(row) for row in answer["entries"])
        return matching, slowest_first(candidates)[:limit]

    def get(self, entry_id: int) -> QueryEntry | None:
        pid, local_id = entry_id & ((1 << PID_BITS) - 1), entry_id >> PID_BITS
        if local_id < 1:
            return None
        if pid == self.master_pid:
            entry = self.local.get(local_id)
            return None if entry is None else replace(entry, id=entry_id)
        with self._lock:
            for retired in self._retired:
                if retired.id == entry_id:
                    return retired
            path = os.path.join(self.directory, f"{pid}{_SOCK}")
            if not os.path.exists(path):
                return None
            try:
                row = _ask(path, {"op": "get", "id": local_id})
            except (OSError, ValueError):
                return None
        return None if row is None else _entry(row)

    @property
    def enabled(self) -> bool:
        return self.local.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        with self._lock:
            self.local.enabled = value
            marker = os.path.join(self.directory, _DISABLED)
            if value:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker)
            else:
                with open(marker, "w", encoding="utf-8"):
                    pass  # workers started later begin disabled too
            self._ask_all({"op": "enable", "value": value})

    def reset(self) -> None:
        with self._lock:
            self.local.reset()
            self._ask_all({"op": "reset"})
            self._seen.clear()
            self._clear_retired()


RELAY = "master.sock"  # the master's socket for API requests mounted on the workers' port
RELAY_TIMEOUT_S = 15.0  # the master asks every worker (ASK_TIMEOUT_S each) before it answers


class MountRelay(_UnixServer):
    """In the master: answers the API requests its workers receive on the app's port
    (``DBPERF_PROFILER_MOUNT``) with the merged view."""

    name = "otel-dbperf-profiler-relay"

    def __init__(self, directory: str, respond: Callable[..., tuple[int, dict[str, Any], dict[str, str]]]) -> None:
        self._respond = respond
        super().__init__(os.path.join(directory, RELAY))

    def answer(self, request: dict[str, Any]) -> Any:
        status, body, headers = self._respond(
            bool(request["open"]),
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


def start_worker(history: QueryHistory, directory: str, flush: Callable[[], None] | None = None) -> WorkerEndpoint:
    """Serve this worker's history to its master (see :class:`WorkerEndpoint`) until exit."""
    endpoint = WorkerEndpoint(history, directory, flush)
    endpoint.start()
    atexit.register(endpoint.at_exit)
    return endpoint
