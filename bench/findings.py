"""What the request findings beyond N+1 queries cost on the request thread, and the watchdog's thread.

Request thread, in instructions (callgrind, ``PYTHONHASHSEED=0``, the garbage collector off during
the measured loop, the main thread's count): the same workload run against otel-dbperf's code at
``--base`` (a git revision before the findings, extracted with ``git archive``) and at the working
tree, in separate interpreters. A request is a SERVER span with, inside it, ``--calls`` outgoing
HTTP CLIENT spans (``url.full`` as contrib's requests/httpx instrumentations set it) or none, issued
from this file (application code) through the SDK with otel-dbperf's processor and a batch
processor whose export runs after the measured loop:

- ``request``: an empty request span (the per-request part: the request's thread, loop, duration
  and the watchdog's table);
- ``http``: a request with ``--calls`` outgoing calls (each: a frame walk to the calling line and
  one tuple appended);
- ``async``: the empty request inside a running asyncio loop (the running task too, and the loop's
  heartbeat: one timer callback per interval).

The watchdog thread, in CPU time (``time.pthread_getcpuclockid`` of that thread), in process:
``idle``: its cost per second of wall-clock time while ``--open`` requests stay open under the
CPU threshold (it reads their threads' CPU clocks every interval); ``sampling``: its cost per tick
while one request burns CPU past the threshold (a ``sys._current_frames`` and a frame walk per
tick, taken with the GIL: the time the request thread waits).

    python bench/findings.py [--base 080451f] [--n 2000] [--calls 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_TOTALS = re.compile(rb"^totals: (\d+)", re.M)


def _setup(calls: int) -> tuple[Any, Any]:
    """(run(n), flush()) of one scenario against whichever otel_dbperf is first on sys.path."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind

    from otel_dbperf._pipeline.processor import DbPerfSpanProcessor
    from otel_dbperf.settings import Settings

    class Null(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    processor = DbPerfSpanProcessor(Settings(app_paths=(HERE,)))
    dog = getattr(processor, "watchdog", None)
    if dog is not None and os.environ.get("BENCH_NO_WATCHDOG_THREAD"):
        dog._needs_thread = False  # noqa: SLF001 - its wake-ups apart: under callgrind (~50x slower) they are many
    provider = TracerProvider()
    provider.add_span_processor(processor)
    batch = BatchSpanProcessor(
        processor.wrap_exporter(Null()), max_queue_size=1_000_000, schedule_delay_millis=3_600_000
    )
    provider.add_span_processor(batch)
    tracer = provider.get_tracer("bench")
    urls = [f"http://api.local/users/{i}" for i in range(calls)]
    server, client = SpanKind.SERVER, SpanKind.CLIENT

    def run(n: int) -> None:
        for _ in range(n):
            with tracer.start_as_current_span("GET /x", kind=server):
                for url in urls:
                    with tracer.start_as_current_span(
                        "GET", kind=client, attributes={"http.request.method": "GET", "url.full": url}
                    ):
                        pass

    def flush() -> None:  # on another thread: its cost is no request's
        thread = threading.Thread(target=batch.force_flush)
        thread.start()
        thread.join()

    return run, flush


def _child(scenario: str, n: int, calls: int) -> int:
    run, flush = _setup(calls if scenario == "http" else 0)

    def measured() -> None:
        run(200)  # warm-up
        flush()
        gc.collect()
        if n:
            gc.disable()
            run(n)
            gc.enable()
        flush()

    if scenario == "async":

        async def main() -> None:
            measured()

        asyncio.run(main())
    else:
        measured()
    return 0


def _callgrind(tree: str, scenario: str, n: int, calls: int, thread: bool = True) -> int:
    """The main thread's instructions of one child run against the otel_dbperf in ``tree`` (``thread``
    False: the watchdog thread is not started)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=tree)
        if not thread:
            env["BENCH_NO_WATCHDOG_THREAD"] = "1"
        args = [sys.executable, __file__, "--child", scenario, "--n", str(n), "--calls", str(calls)]
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}", *args],
            capture_output=True,
            check=True,
            env=env,
        )
        with open(out + "-01", "rb") as fh:
            found = _TOTALS.findall(fh.read())
    return int(found[-1]) if found else 0


def _per_request(tree: str, scenario: str, n: int, calls: int, thread: bool = True) -> float:
    return (_callgrind(tree, scenario, n, calls, thread) - _callgrind(tree, scenario, 0, calls, thread)) / n


def _extract(base: str, into: str) -> str:
    """otel_dbperf at revision ``base``, extracted into ``into`` (nothing in the repository changes)."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", base, "otel_dbperf"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return into


def instructions(base: str, n: int, calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        before = _extract(base, tmp)
        figures: dict[tuple[str, str], float] = {}
        for scenario in ("request", "http", "async"):
            figures[scenario, "before"] = _per_request(before, scenario, n, calls)
            figures[scenario, "code"] = _per_request(ROOT, scenario, n, calls, thread=False)
            figures[scenario, "after"] = _per_request(ROOT, scenario, n, calls)
    print(f"request thread, instructions per request ({n} requests; before = {base}, after = working tree;")
    print("'code': after with the watchdog thread not started, i.e. the hooks' own code, without the GIL")
    print("hand-offs of its wake-ups, which callgrind's ~50x slower clock multiplies per request)")
    print(f"{'scenario':<10}{'before':>12}{'code':>12}{'after':>12}{'code added':>12}{'added':>10}")
    for scenario in ("request", "http", "async"):
        b, c, a = (figures[scenario, side] for side in ("before", "code", "after"))
        print(f"{scenario:<10}{b:>12,.0f}{c:>12,.0f}{a:>12,.0f}{c - b:>+12,.0f}{a - b:>+10,.0f}")
    for side in ("code", "after"):
        per_request = figures["request", side] - figures["request", "before"]
        per_call = (figures["http", side] - figures["http", "before"] - per_request) / calls
        print(f"per outgoing HTTP call ({side}): {per_call:+,.0f} instructions ({calls} calls per request)")


def watchdog(open_requests: int, seconds: float) -> None:
    """The watchdog thread's CPU time: idle with requests open, and per tick while sampling."""
    from otel_dbperf._pipeline.record import Request, Thresholds
    from otel_dbperf._pipeline.watchdog import Watchdog

    thresholds = Thresholds(slow_ns=1, stack_ns=1, n_plus_one=5, statement_max_length=4096)
    dog = Watchdog(thresholds, None, cpu=True)
    stop = threading.Event()

    def hold() -> None:  # a request open on its own thread, waiting (no CPU)
        request = Request(0, time.thread_time_ns(), 0)
        dog.started(id(request), request)
        stop.wait()

    def idle(label: str) -> None:
        c0, w0 = time.clock_gettime_ns(clock), time.monotonic_ns()
        time.sleep(seconds)
        spent = (time.clock_gettime_ns(clock) - c0) / ((time.monotonic_ns() - w0) / 1e9) / 1000
        print(
            f"watchdog idle, {label}: {spent:,.0f} µs of CPU per second (a wake-up every {dog.interval * 1000:.0f} ms)"
        )

    first = Request(0, time.thread_time_ns(), 0)
    dog.started(0, first)  # starts the thread
    del dog.requests[0]
    time.sleep(0.2)
    watcher = next(t for t in threading.enumerate() if t.name == "otel-dbperf-watchdog")
    clock = time.pthread_getcpuclockid(watcher.ident)  # type: ignore[arg-type]
    idle("no open request")
    holders = [threading.Thread(target=hold) for _ in range(open_requests)]
    for t in holders:
        t.start()
    time.sleep(0.5)  # older than the 200 ms CPU threshold: their CPU clocks are read at every look
    idle(f"{open_requests} requests open past the threshold, waiting (their CPU clocks read at each look)")

    def burn() -> None:  # a CPU-bound request past the threshold
        request = Request(1, time.thread_time_ns(), 0)
        dog.started(1, request)
        end = time.monotonic() + seconds + 0.5
        while time.monotonic() < end:
            sum(range(1000))
        request.ended = True
        print(f"  stack samples taken: {len(request.samples or ())}")

    burner = threading.Thread(target=burn)
    burner.start()
    time.sleep(0.4)  # past the 200 ms CPU threshold
    c0, w0 = time.clock_gettime_ns(clock), time.monotonic_ns()
    time.sleep(seconds)
    spent = time.clock_gettime_ns(clock) - c0
    ticks = (time.monotonic_ns() - w0) / 1e9 / dog.interval  # a CPU look per wake-up (no loop watched)
    print(
        f"watchdog sampling: {spent / ticks / 1000:,.1f} µs of CPU per tick (a stack sample of the CPU-bound request)"
    )
    burner.join()
    stop.set()
    for t in holders:
        t.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="080451f", help="the revision before the findings")
    parser.add_argument("--n", type=int, default=2000, help="requests per measured run")
    parser.add_argument("--calls", type=int, default=10, help="outgoing HTTP calls per request (http scenario)")
    parser.add_argument("--open", type=int, default=32, help="open requests while the watchdog idles")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--watchdog-only", action="store_true", help="only the watchdog thread's figures")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child, args.n, args.calls)
    if not args.watchdog_only:
        instructions(args.base, args.n, args.calls)
    watchdog(args.open, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
