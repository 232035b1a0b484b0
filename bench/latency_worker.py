"""One mode of ``overhead.py --latency``, in a process of its own (run by ``overhead.py``, not by hand).

Each mode (bare, vanilla OTel, otel-dbperf, ddtrace, ...) gets its own process, so that the
tracers never share an interpreter: ddtrace runs from a side virtualenv with only ddtrace and
SQLAlchemy in it. The parent sends ``run CONCURRENCY REQUESTS`` lines on stdin; the worker runs
that many requests per thread (each: a request span, or none for ``bare``, around 10 point
SELECTs issued 20 frames deep on a SQLite file), exports what is left on its main thread once
the requests are done, and answers one JSON line:

- ``requests``: per request [start, wall seconds, the request thread's CPU seconds];
- ``intervals``: what the export side and the garbage collector did meanwhile, as
  [name, start, end, CPU seconds of the thread that did it] (perf_counter, the worker's clock):
  ``export`` (one batch through the exporter chain), ``encode`` and ``send`` inside it when the
  exporter is otel-dbperf's, ``gc0``/``gc1``/``gc2`` (a collection of that generation, on any
  thread), so the parent can say what the slow requests overlapped (the end-of-round flush
  overlaps none);
- ``dropped``: spans the SDK's batch processor dropped, its queue full.

This file imports only the standard library and SQLAlchemy at the top (the ddtrace side
virtualenv has nothing else); the OpenTelemetry modes are set up by ``overhead.latency_setup``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

QUERIES_PER_REQUEST = 10
DEPTH = 20

Interval = tuple[str, float, float, float]


class Recorder(logging.Handler):
    """Intervals of named calls (the export side) and of garbage collections; spans dropped by a
    full queue (the SDK's batch processor logs each)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.intervals: list[Interval] = []
        self.dropped = 0
        self._gc_start: dict[int, tuple[float, float]] = {}
        gc.callbacks.append(self._gc)
        logging.getLogger("opentelemetry").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Queue full"):
            self.dropped += 1

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        """Record every call of ``obj.attr`` (an instance attribute shadowing the method)."""
        inner = getattr(obj, attr)
        out = self.intervals

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                out.append((name, t0, time.perf_counter(), time.thread_time() - c0))

        setattr(obj, attr, timed)

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        ident = threading.get_ident()
        if phase == "start":
            self._gc_start[ident] = (time.perf_counter(), time.thread_time())
            return
        started = self._gc_start.pop(ident, None)
        if started is not None:
            t0, c0 = started
            self.intervals.append((f"gc{info['generation']}", t0, time.perf_counter(), time.thread_time() - c0))


def deep(depth: int, fn: Callable[[], Any]) -> Any:
    if depth:
        return deep(depth - 1, fn)
    return fn()


def make_engine(path: str) -> Any:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False}, pool_size=8)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS authors (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT OR REPLACE INTO authors VALUES (1, 'ann'), (2, 'bob')"))
    return engine


class Mode:
    """What a mode provides: the request span, the end-of-round flush, the shutdown."""

    def __init__(
        self,
        span: Callable[[], Any] = contextlib.nullcontext,
        flush: Callable[[], Any] = lambda: None,
        shutdown: Callable[[], Any] = lambda: None,
    ) -> None:
        self.span = span
        self.flush = flush
        self.shutdown = shutdown


def ddtrace_mode(engine: Any, recorder: Recorder) -> Mode:
    """ddtrace's SQLAlchemy integration and a request span; its agent is the parent's discard receiver
    (``DD_TRACE_AGENT_URL``, set by the parent), so its writer encodes and sends as it would."""
    from ddtrace.contrib.sqlalchemy import trace_engine
    from ddtrace.trace import tracer

    trace_engine(engine)

    def span() -> Any:
        return tracer.trace("GET /bench", service="bench", resource="GET /bench", span_type="web")

    return Mode(span, tracer.flush, tracer.shutdown)


def run_round(engine: Any, mode: Mode, concurrency: int, per_thread: int) -> list[list[float]]:
    from sqlalchemy import text

    point = text("SELECT name FROM authors WHERE id = :id")
    out: list[list[float]] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        perf, cpu = time.perf_counter, time.thread_time
        with engine.connect() as conn:
            for j in range(per_thread):
                t0, c0 = perf(), cpu()
                with mode.span():
                    for i in range(j * QUERIES_PER_REQUEST, (j + 1) * QUERIES_PER_REQUEST):
                        deep(DEPTH, lambda i=i: conn.execute(point, {"id": i % 2 + 1}).scalar())
                mine.append([t0, perf() - t0, cpu() - c0])
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main(argv: list[str]) -> int:
    name, port, db = argv[0], int(argv[1]), argv[2]
    engine = make_engine(db)
    recorder = Recorder()
    if name == "bare":
        mode = Mode()
    elif name == "ddtrace":
        mode = ddtrace_mode(engine, recorder)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from overhead import latency_setup  # the OpenTelemetry modes

        mode = Mode(*latency_setup(name, engine, port, recorder))
    print(json.dumps({"ready": name}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "run":
            break
        del recorder.intervals[:]
        recorder.dropped = 0
        requests = run_round(engine, mode, int(words[1]), int(words[2]))
        mode.flush()  # what is left goes out now, after the requests (the parent keeps what overlapped them)
        answer = {"requests": requests, "intervals": recorder.intervals, "dropped": recorder.dropped}
        print(json.dumps(answer), flush=True)
    mode.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
