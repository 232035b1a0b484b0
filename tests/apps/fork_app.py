"""Forks children while the parent exports heavily; every child traces, flushes and exits.

Run under ``opentelemetry-instrument python fork_app.py N_CHILDREN``. Prints one JSON line:
``{"children": n, "exited": [...exit codes...], "hung": k}``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
import time

from opentelemetry import metrics, trace

tracer = trace.get_tracer("fork-app")
stop = threading.Event()
unique = itertools.count()  # every statement new: the export thread analyses each (holding its lock longer)


def request(name: str, queries: int) -> None:
    with tracer.start_as_current_span(name, kind=trace.SpanKind.SERVER) as root:
        root.set_attribute("http.route", name)
        for i in range(queries):
            with tracer.start_as_current_span("SELECT", kind=trace.SpanKind.CLIENT) as db:
                db.set_attribute("db.system.name", "postgresql")
                literal = f"secret-{next(unique)}"
                db.set_attribute("db.query.text", f"SELECT * FROM items WHERE id = {i} AND owner = '{literal}'")


def busy() -> None:
    while not stop.is_set():
        request("/parent", 20)


def child(index: int) -> None:
    request(f"/child/{index}", 6)
    ok = trace.get_tracer_provider().force_flush(30_000)  # type: ignore[attr-defined]
    # a collection runs otel-dbperf's derivation (its lock) on this thread
    ok = metrics.get_meter_provider().force_flush(30_000) and ok  # type: ignore[attr-defined]
    sys.exit(0 if ok else 3)  # a normal exit: atexit handlers (otel-dbperf's, the SDK's) run


def main() -> None:
    n = int(sys.argv[1])
    workers = [threading.Thread(target=busy, daemon=True) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(0.5)  # the export thread is busy by now
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                child(i)
            except SystemExit:
                raise
            except BaseException:  # noqa: BLE001
                os._exit(4)
        pids.append(pid)
        time.sleep(0.02)
    stop.set()  # the hazard is at fork time; from here on the children get the CPU
    codes, hung = wait_all(pids, 60.0)  # a hang detector: a healthy child exits in about a second
    print(json.dumps({"children": n, "exited": codes, "hung": hung}), flush=True)


def wait_all(pids: list[int], limit_s: float) -> tuple[list[int], int]:
    """The children's exit codes (sorted), and how many were still running after ``limit_s``
    (killed). Shared with tests/test_fork.py."""
    deadline = time.monotonic() + limit_s
    codes: dict[int, int] = {}
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    hung = [pid for pid in pids if pid not in codes]
    for pid in hung:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return sorted(codes.values()), len(hung)


if __name__ == "__main__":
    main()
