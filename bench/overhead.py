"""The cost of otel-dbperf against vanilla contrib tracing, on the workload of design.md section 6.

Workload: SQLite in-memory point SELECT through SQLAlchemy, issued 20 frames deep, 10 queries
inside each request (SERVER) span; traces exported over OTLP/HTTP protobuf (the SDK's
``OTLPSpanExporter``, batches of 512) to a local receiver (a subprocess that accepts and discards),
so the export thread's encoding, which users pay, is counted. Vanilla and otel-dbperf share one
engine and one SQLAlchemy instrumentation; only the span processors differ.

The gate (section 6) is instructions, counted by callgrind with ``PYTHONHASHSEED=0``, one
callgrind run per variant and figure, minus a run of the same variant without the measured
loop. Request thread: the main thread's instructions (``--separate-threads``) with the garbage
collector off during the measured loop; all threads: every thread's, with it on. The final
flush always runs on another thread, and (since issue 27) it is the only export: the batch
processors are not woken on their wall-clock schedule during the run (``--live-export`` restores
that), so the same spans are encoded and sent, all threads count it, and no export thread takes the
GIL from the measured loop (under callgrind a 5 ms switch interval is a fiftieth of the work it is
natively, and how many fell in the loop followed the machine's load; see docs/design.md "Cost").
CPU times (paired medians of interleaved rounds, engines
in one process) are printed beside, as information: the thread-CPU clock is a system call
callgrind does not see, and this VM's speed drifts by tens of percent.

    python bench/overhead.py                      # CPU time, interleaved rounds (information)
    python bench/overhead.py --instructions       # the gate: each section 6 limit with its figure, at 10, 20, 40 frames
    python bench/overhead.py --latency            # p99 request latency, concurrency 1 and 4
    python bench/overhead.py --probe              # the independent probe's setup (see docs/design.md)
    python bench/overhead.py --breakdown          # empty processor, CPU clocks alone, frame walk alone
    python bench/overhead.py --memory 1000000 --distinct 100000

Options: ``--samples request|query|off`` (DBPERF_RESOURCE_SAMPLES, default request),
``--exporter otlp|null`` (null: the spans are dropped, nothing encoded), ``--queries N``,
``--depth 10,20,40`` (the application frame issuing each query is that many frames below the
request span; ``--instructions`` measures every depth given, default all three; the other modes
take the first, default 20), ``--save FILE`` / ``--reuse FILE`` (with ``--instructions``: write
every count to FILE; take the bare and vanilla counts from FILE instead of measuring them again,
for a before/after of otel-dbperf's own code: they do not run it in the measured loop),
``BENCH_QUIET_EXPORT=1`` (the other modes: exports only when flushed, as ``--instructions`` does),
``--checkout`` (each request checks a connection out of the pool and runs its 10 queries in one
transaction, ``with engine.begin()``: otel-dbperf's pool and transaction hooks on the measured path).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import StaticPool

from otel_dbperf import DbPerfSpanProcessor, Settings, _duplicates, _pools, _transactions
from otel_dbperf._location import AppCode, location_of
from otel_dbperf._otlp import SpanEncoder, fast_exporter
from otel_dbperf._resources import rss_bytes

QUERIES_PER_REQUEST = 10
STOCK = "otel-dbperf, stock encoder"  # otel-dbperf with DBPERF_OTLP_ENCODER=stock
#: --checkout: each request checks a connection out of the pool and runs its queries in one transaction
#: (``with engine.begin()``), so otel-dbperf's pool and transaction hooks are on the measured path
CHECKOUT = os.environ.get("BENCH_CHECKOUT") == "1"
#: BENCH_POOL_HOOKS=0 with --checkout: otel-dbperf without its pool and transaction hooks (their share)
POOL_HOOKS = os.environ.get("BENCH_POOL_HOOKS") != "0"
DEPTH = 20  # frames between the request span and the application frame that issues each query (--depth)
DEPTHS = (10, 20, 40)  # --instructions measures each
#: BENCH_QUIET_EXPORT=1 (attribution runs, not the gate): the batch processors export only when flushed
#: (a 300-query run queues fewer spans than a batch), so no export runs while the request thread is
#: measured: its count is then its own work, without the GIL hand-offs to an export thread whose timing
#: (a 5 s schedule, in wall-clock time) varies with the machine's load under callgrind
QUIET_EXPORT = {"schedule_delay_millis": 3_600_000} if os.environ.get("BENCH_QUIET_EXPORT") == "1" else {}
BATCH = 512
NEVER_SLOW_MS = 86_400_000.0  # the slow-query and stack-trace thresholds of the measured variants (a day)
HERE = os.path.dirname(os.path.abspath(__file__))

# --------------------------------------------------------------------------- the local receiver


class _Discard(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass


def _receiver_main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


class Receiver:
    """An OTLP/HTTP receiver in a subprocess (outside callgrind, outside the process CPU time)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver"], stdout=subprocess.PIPE, text=True, env=_child_env()
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_"))}
    env["PYTHONHASHSEED"] = "0"
    env.update(extra)
    return env


# --------------------------------------------------------------------------- the workload


class NullExporter(SpanExporter):
    """Drops the spans: nothing encoded (``--exporter null``)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def make_exporter(kind: str, port: int) -> SpanExporter:
    if kind == "null":
        return NullExporter()
    return OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")


def make_engine(url: str = "sqlite://") -> Engine:
    if url == "sqlite://":
        engine = create_engine(url, poolclass=StaticPool)
    else:
        engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=8)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS authors (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT OR REPLACE INTO authors VALUES (1, 'ann'), (2, 'bob')"))
    return engine


POINT = text("SELECT name FROM authors WHERE id = :id")


def deep(depth: int, fn: Callable[[], Any]) -> Any:
    if depth:
        return deep(depth - 1, fn)
    return fn()


def flush_elsewhere(*flushables: Any) -> None:
    """Flush on another thread: what is left in the queue is not the request thread's work."""

    def flush() -> None:
        for f in flushables:
            f.force_flush()

    t = threading.Thread(target=flush)
    t.start()
    t.join()


class Variant:
    """One way to run the same requests; the traced variants share one engine and tracer.

    Sharing the engine keeps SQLAlchemy's caches and the instrumentation identical, so the
    difference between vanilla and otel-dbperf is only the span processors, swapped in
    before each of the variant's rounds.
    """

    def __init__(
        self,
        name: str,
        engine: Engine,
        provider: TracerProvider | None = None,
        processors: tuple[Any, ...] = (),
        requests: bool = True,
        deriver: Any = None,
        meters: Any = None,
        duplicates: bool = False,
    ) -> None:
        self.name = name
        self.duplicates = duplicates  # otel-dbperf's parameter-digest listener (exact duplicates) on
        self.engine = engine
        self.provider = provider
        self.processors = processors
        self.requests = requests
        self.deriver = deriver
        self.meters = meters
        self.tracer = provider.get_tracer("bench.framework") if provider else None
        # what a framework instrumentation records per request when metrics are on (both variants)
        self.http = (
            meters.get_meter("bench.framework").create_histogram("http.server.request.duration", unit="s")
            if meters is not None
            else None
        )
        self.extra_flush: tuple[Any, ...] = ()  # the MeterProvider: its final collection and export
        self.thread_ns: list[float] = []
        self.total_ns: list[float] = []

    def activate(self) -> None:
        if self.provider is not None:
            self.provider._active_span_processor._span_processors = self.processors  # noqa: SLF001
        # class-level, so on for otel-dbperf's variants only (vanilla shares the engine)
        if self.duplicates:
            _duplicates.install(self.processors[0])
        else:
            _duplicates.uninstall()
        if self.duplicates and CHECKOUT and POOL_HOOKS:  # otel-dbperf's pool and transaction hooks (class-level)
            _pools.install(100.0, self.meters, records=self.processors[0])
            _transactions.install(1000.0, records=self.processors[0])
        else:
            _pools.uninstall(metrics=False)
            _transactions.uninstall()

    def requests_of(self, conn: Any, start: int, statement: Callable[[int], Any]) -> None:
        """One request: 10 queries, each 20 frames deep, in a SERVER span (or none); ``conn`` None
        (``--checkout``): on a connection checked out for the request, in one transaction."""
        tracer = self.tracer
        if tracer is not None and self.requests:
            t0 = time.perf_counter()
            with tracer.start_as_current_span("GET /bench", kind=SpanKind.SERVER):
                self.queries(conn, start, statement)
            if self.http is not None:
                self.http.record(time.perf_counter() - t0, {"http.route": "/bench", "http.request.method": "GET"})
        else:
            self.queries(conn, start, statement)

    def queries(self, conn: Any, start: int, statement: Callable[[int], Any]) -> None:
        if conn is None:
            with self.engine.begin() as checked_out:
                self.queries(checked_out, start, statement)
            return
        for i in range(start, start + QUERIES_PER_REQUEST):
            deep(DEPTH, lambda i=i: conn.execute(statement(i), {"id": i % 2 + 1}).scalar())

    def run(self, n: int, statement: Callable[[int], Any] = lambda i: POINT) -> None:
        self.activate()
        with contextlib.nullcontext() if CHECKOUT else self.engine.connect() as conn:
            cpu0, proc0 = time.thread_time_ns(), time.process_time_ns()
            for start in range(0, n, QUERIES_PER_REQUEST):
                self.requests_of(conn, start, statement)
            cpu1 = time.thread_time_ns()
            self.flush()
            proc1 = time.process_time_ns()
        self.thread_ns.append((cpu1 - cpu0) / n)
        self.total_ns.append((proc1 - proc0) / n)

    def flush(self) -> None:
        """The round's export-side work (and metric derivation), on another thread."""
        parts: list[Any] = list(self.processors)
        if self.deriver is not None:
            parts.append(_Drain(self.deriver))
        parts += self.extra_flush
        if parts:
            flush_elsewhere(*parts)


class _Drain:
    def __init__(self, deriver: Any) -> None:
        self.deriver = deriver

    def force_flush(self) -> None:
        self.deriver.drain()


def build(
    samples: str = "request",
    exporter: str = "otlp",
    port: int = 0,
    requests: bool = True,
    metrics: bool = False,
    stock: bool = False,
) -> dict[str, Variant]:
    """``bare``, ``vanilla`` and ``otel-dbperf`` (with ``metrics``: both with a MeterProvider).

    ``otel-dbperf`` sends through otel-dbperf's OTLP encoder (``DBPERF_OTLP_ENCODER=fast``, the
    default), as ``_runtime`` composes it; with ``stock``, also ``otel-dbperf, stock encoder``: the same
    processor and exporter with the SDK's encoder."""
    settings = Settings(
        app_paths=(HERE,),
        resource_samples=samples,  # type: ignore[arg-type]
        code_location=os.environ.get("BENCH_CODE_LOCATION") != "false",  # attribution runs only
        # no query is slow: under callgrind a point SELECT's wall-clock time (~50x its native one) passed
        # 100 ms, and even the stack-trace threshold, whenever the loaded machine descheduled it, so the
        # count followed the load (a stack trace per such query on the request thread, slow events to encode)
        slow_query_threshold_ms=NEVER_SLOW_MS,
        stacktrace_threshold_ms=NEVER_SLOW_MS,
    )
    provider = TracerProvider()
    meters = deriver = None
    if metrics:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        from otel_dbperf._pipeline.derive import build_deriver
        from otel_dbperf.metrics import default_views

        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"http://127.0.0.1:{port}/v1/metrics"), export_interval_millis=3_600_000
        )
        meters = MeterProvider(metric_readers=[reader], views=default_views())
        counter = meters.get_meter("opentelemetry.instrumentation.sqlalchemy").create_up_down_counter(
            "db.client.connections.usage"
        )
    else:
        counter = NoOpMeterProvider().get_meter("bench").create_up_down_counter("c")
    engine = make_engine()
    EngineTracer(provider.get_tracer("opentelemetry.instrumentation.sqlalchemy"), engine, counter)
    dbperf = DbPerfSpanProcessor(settings)
    if meters is not None:
        deriver = build_deriver(dbperf.thresholds, meters)
        dbperf.attach_deriver(deriver.submit)

    def batch(exp: SpanExporter) -> BatchSpanProcessor:
        return BatchSpanProcessor(exp, max_export_batch_size=BATCH, **QUIET_EXPORT)

    ours = (dbperf, batch(dbperf.wrap_exporter(fast_exporter(make_exporter(exporter, port), "fast"))))
    variants = {
        "bare": Variant("bare", make_engine(), requests=requests),
        "vanilla": Variant(
            "vanilla", engine, provider, (batch(make_exporter(exporter, port)),), requests, meters=meters
        ),
        "otel-dbperf": Variant("otel-dbperf", engine, provider, ours, requests, deriver, meters, duplicates=True),
    }
    if stock:
        variants[STOCK] = Variant(
            STOCK,
            engine,
            provider,
            (dbperf, batch(dbperf.wrap_exporter(make_exporter(exporter, port)))),
            requests,
            deriver,
            meters,
            duplicates=True,
        )
    if meters is not None:
        for v in variants.values():
            v.extra_flush = (meters,)  # the final flush collects and exports the metrics too
    return variants


# --------------------------------------------------------------------------- CPU time (information)


def paired(a: Variant, b: Variant, field: str) -> float:
    """Median over rounds of (a - b) in µs: each round's variants ran back to back."""
    return statistics.median(x - y for x, y in zip(getattr(a, field), getattr(b, field), strict=True)) / 1000


def cpu_time(rounds: int, block: int, samples: str, exporter: str) -> dict[str, tuple[float, float]]:
    """Ratios (otel-dbperf added / vanilla added) per scenario: request thread and all threads."""
    receiver = Receiver()
    try:
        scenarios = {
            "requests": build(samples, exporter, receiver.port, stock=True),
            "no request": build(samples, exporter, receiver.port, requests=False),
            "metrics": build(samples, exporter, receiver.port, metrics=True),
        }
        every = [v for s in scenarios.values() for v in s.values()]
        for v in every:  # warm-up: caches, imports, first connect
            v.run(500)
            v.thread_ns.clear()
            v.total_ns.clear()
        for _ in range(rounds):
            random.shuffle(every)
            for v in every:
                v.run(block)
        for meters in {m for v in every for m in v.extra_flush}:
            meters.shutdown()  # while the receiver still answers
    finally:
        receiver.close()
    print(
        f"CPU time, python {sys.version.split()[0]}: {rounds} rounds of {block} queries per variant, interleaved; "
        f"DBPERF_RESOURCE_SAMPLES={samples}; exporter {exporter}; paired medians, us/query"
    )
    out = {}
    for name, s in scenarios.items():
        bare, vanilla = s["bare"], s["vanilla"]
        vt, vc = paired(vanilla, bare, "thread_ns"), paired(vanilla, bare, "total_ns")
        for key in ("otel-dbperf", STOCK):
            if key not in s:
                continue
            ot, oc = paired(s[key], vanilla, "thread_ns"), paired(s[key], vanilla, "total_ns")
            out[name if key == "otel-dbperf" else f"{name}, stock encoder"] = (ot / vt, oc / vc)
            label = name if key == "otel-dbperf" else "  stock encoder"
            print(
                f"  {label:<15} vanilla adds {vt:6.2f} request thread, {vc:6.2f} all threads; "
                f"{key} adds {ot:6.2f} ({ot / vt:+.0%}) and {oc:6.2f} ({oc / vc:+.0%})"
            )
    return out


# --------------------------------------------------------------------------- instructions (the gate)

_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.M)


def _instructions_child(variant: str, n: int, gc_off: bool, port: int, samples: str, exporter: str) -> int:
    """Run ``n`` queries of one variant, ``depth:scenario:name`` (the parent runs this under callgrind)."""
    global DEPTH
    depth, _, variant = variant.partition(":")
    DEPTH = int(depth)
    scenario, _, name = variant.partition(":")
    variants = build(
        samples, exporter, port, requests=scenario != "no request", metrics=scenario == "metrics", stock=name == STOCK
    )
    chosen = variants[name]
    chosen.run(300)  # warm-up, flushed on another thread
    gc.collect()  # in the run without queries too: its ~20M instructions are no query's
    if n:
        if gc_off:
            gc.disable()
        chosen.run(n)
        gc.enable()
    chosen.flush()
    return 0


def _callgrind(args: list[str], extra_env: dict[str, str] | None = None) -> tuple[int, int]:
    """(main thread, all threads) instructions of one run of ``args`` under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}", *args],
            capture_output=True,
            check=True,
            env=_child_env(**(extra_env or {})),
        )
        per_thread = {}
        for f in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, f), "rb") as fh:
                found = _TOTALS.findall(fh.read())
            per_thread[f] = int(found[-1]) if found else 0
    main = per_thread.get("cg.out-01", 0)
    return main, sum(per_thread.values())


def _count(variant: str, n: int, port: int, samples: str, exporter: str, quiet: bool = True) -> tuple[float, float]:
    """Instructions per query: (request thread with GC off, all threads with GC on). ``quiet``: the batch
    processors export only when flushed (see ``QUIET_EXPORT``): the same spans are encoded and sent, by the
    final flush on another thread, and no export thread takes the GIL from the measured loop."""
    base = [sys.executable, __file__, "--instructions-child", variant, "--port", str(port)]
    base += ["--samples", samples, "--exporter", exporter]
    env = {"BENCH_QUIET_EXPORT": "1"} if quiet else {}
    zero_main, zero_all = _callgrind([*base, "--queries", "0"], env)
    off_main, _ = _callgrind([*base, "--queries", str(n), "--gc", "off"], env)
    _, on_all = _callgrind([*base, "--queries", str(n), "--gc", "on"], env)
    return (off_main - zero_main) / n, (on_all - zero_all) / n


LIMITS = {  # section 6: (scenario, figure index) -> limit on (otel-dbperf added) / (vanilla added)
    ("requests", 0): 0.10,
    ("requests", 1): 0.30,
    ("no request", 0): 0.30,
    ("no request", 1): 0.50,
    ("metrics", 1): 0.60,
}


SCENARIOS = ("requests", "no request", "metrics")


def instructions(
    n: int,
    samples: str,
    exporter: str,
    cpu_rounds: int,
    stock_in: tuple[str, ...] = ("requests",),
    scenarios: tuple[str, ...] = SCENARIOS,
    depths: tuple[int, ...] = DEPTHS,
    save: str | None = None,
    reuse: str | None = None,
    quiet: bool = True,
) -> int:
    """Each section 6 limit with its instruction figure and verdict at each depth, the CPU-time figure
    beside it (at the first depth).

    ``stock_in``: the scenarios where otel-dbperf with the SDK's encoder is measured too;
    ``scenarios``: those measured (the moonshot needs requests and metrics); ``save``: a JSON file
    every count is written to as it comes; ``reuse``: such a file, whose bare and vanilla counts of the
    same protocol are taken instead of measured."""
    global DEPTH
    stock_in = tuple(x for x in stock_in if x in scenarios)
    if not shutil.which("valgrind"):
        print("valgrind not found (apt-get install valgrind)")
        return 1
    protocol = {"queries": n, "samples": samples, "exporter": exporter, "checkout": CHECKOUT, "quiet_export": quiet}
    reused = _load_counts(reuse, protocol)
    receiver = Receiver()
    counts: dict[str, tuple[float, float]] = {}
    try:
        for depth in depths:
            for scenario in scenarios:
                for name in ("bare", "vanilla", "otel-dbperf", STOCK):
                    if name == STOCK and scenario not in stock_in:
                        continue
                    key = f"{depth}:{scenario}:{name}"
                    note = ""
                    if name in ("bare", "vanilla") and key in reused:
                        counts[key] = reused[key]
                        note = f"  (from {reuse})"
                    else:
                        counts[key] = _count(key, n, receiver.port, samples, exporter, quiet)
                    print(
                        f"  {key:<42}{counts[key][0]:>12,.0f} request thread (GC off)"
                        f"{counts[key][1]:>12,.0f} all threads{note}",
                        flush=True,
                    )
                    if save:
                        _save_counts(save, protocol, counts)
    finally:
        receiver.close()
    DEPTH = depths[0]
    cpu = cpu_time(cpu_rounds, 200, samples, exporter) if cpu_rounds else {}
    ok = True
    for depth in depths:
        cpu_here = cpu if depth == depths[0] else {}
        ok = _limits(counts, depth, n, samples, exporter, stock_in, scenarios, cpu_here, quiet) and ok
    return 0 if ok else 3


def _load_counts(path: str | None, protocol: dict[str, Any]) -> dict[str, tuple[float, float]]:
    if not path or not os.path.exists(path):
        return {}
    with open(path) as fh:
        saved = json.load(fh)
    if saved.get("protocol") != protocol:
        print(f"{path}: another protocol ({saved.get('protocol')}), not reused")
        return {}
    return {k: (v[0], v[1]) for k, v in saved["counts"].items()}


def _save_counts(path: str, protocol: dict[str, Any], counts: dict[str, tuple[float, float]]) -> None:
    with open(path, "w") as fh:
        json.dump({"protocol": protocol, "counts": counts}, fh, indent=1)


def _limits(
    all_counts: dict[str, tuple[float, float]],
    depth: int,
    n: int,
    samples: str,
    exporter: str,
    stock_in: tuple[str, ...],
    scenarios: tuple[str, ...],
    cpu: dict[str, tuple[float, float]],
    quiet: bool = True,
) -> bool:
    """Print each section 6 limit with its figure and verdict at ``depth``; whether all are met."""
    prefix = f"{depth}:"
    counts = {k[len(prefix) :]: v for k, v in all_counts.items() if k.startswith(prefix)}
    print(
        f"\ninstructions per query (callgrind, PYTHONHASHSEED=0, {n} queries, {QUERIES_PER_REQUEST} per request, "
        f"{depth} frames deep, exporter {exporter}, batches of {BATCH}, DBPERF_RESOURCE_SAMPLES={samples}, "
        f"{'exports when flushed' if quiet else 'exports on schedule'})"
    )
    ok = True
    rows = [(scenario, "otel-dbperf") for scenario in scenarios]
    rows += [(scenario, STOCK) for scenario in stock_in]
    for scenario, variant in rows:
        bare, vanilla, ours = (counts[f"{scenario}:{x}"] for x in ("bare", "vanilla", variant))
        if variant == STOCK:
            print(f"  the same, DBPERF_OTLP_ENCODER=stock ({scenario}):")
        for i, label in ((0, "request thread"), (1, "all threads")):
            added = vanilla[i] - bare[i]
            ours_added = ours[i] - vanilla[i]
            ratio = ours_added / added
            limit = LIMITS.get((scenario, i)) if variant == "otel-dbperf" else None
            if variant == STOCK:
                verdict = ""
            elif scenario == "metrics" and i == 0 and "requests" in scenarios:
                plain = counts["requests:otel-dbperf"][0] - counts["requests:vanilla"][0]
                extra = ours_added - plain  # what metrics add on the request thread beyond tracing
                verdict = f"metrics add {extra:+,.0f}: " + ("OK" if extra <= 0.01 * added else "OVER")
            elif limit is None:
                verdict = ""
            else:
                verdict = f"limit +{limit:.0%}: " + ("OK" if ratio <= limit else "OVER")
                ok = ok and ratio <= limit
            cpu_key = scenario if variant == "otel-dbperf" else f"{scenario}, stock encoder"
            cpu_figure = f"CPU time {cpu[cpu_key][i]:+.0%}" if cpu_key in cpu else ""
            print(
                f"  {scenario:<11}{label:<15} vanilla adds {added:>9,.0f}  otel-dbperf {ours_added:>+9,.0f} "
                f"({ratio:+.1%})  {verdict:<28}{cpu_figure}"
            )
    # the moonshot (issue 16): all of otel-dbperf against vanilla tracing alone
    if "requests" not in scenarios or "metrics" not in scenarios:
        return ok
    vanilla_alone = counts["requests:vanilla"]
    print(f"\nmoonshot, {depth} frames deep: otel-dbperf's whole pipeline against vanilla tracing alone")
    whole = (("requests:otel-dbperf", "otel-dbperf (tracing)"), ("metrics:otel-dbperf", "otel-dbperf + metrics"))
    for key, label in whole:
        for i, thread in ((0, "request thread"), (1, "all threads")):
            base = vanilla_alone[i] - counts["requests:bare"][i]
            ours_total = counts[key][i] - counts["requests:bare"][i]
            print(
                f"  {label:<22}{thread:<15} adds {ours_total:>9,.0f} to bare; vanilla tracing adds {base:>9,.0f} "
                f"({ours_total / base - 1:+.1%})"
            )
    return ok


# --------------------------------------------------------------------------- p99 latency


def latency(rounds: int, per_round: int) -> int:
    """p99 request latency, concurrency 1 and 4, exporter on/off and two batch sizes, interleaved."""
    receiver = Receiver()
    tmp = tempfile.mkdtemp()
    try:
        settings = Settings(app_paths=(HERE,))
        provider = TracerProvider()
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        counter = NoOpMeterProvider().get_meter("bench").create_up_down_counter("c")
        EngineTracer(provider.get_tracer("opentelemetry.instrumentation.sqlalchemy"), engine, counter)

        def ours(
            exporter: SpanExporter, batch: int, encoder: str = "fast", pause: float | None = None
        ) -> tuple[Any, ...]:
            p = DbPerfSpanProcessor(settings)  # (no duplicate digests here)
            sender = fast_exporter(exporter, encoder)
            if pause is not None:
                sender.encoder.pause_s = pause  # type: ignore[attr-defined]
            return (p, BatchSpanProcessor(p.wrap_exporter(sender), max_export_batch_size=batch))

        otlp = lambda: make_exporter("otlp", receiver.port)  # noqa: E731
        configs = {
            "bare": Variant("bare", make_engine(f"sqlite:///{tmp}/bare.db")),
            "vanilla, exporter off": Variant("v0", engine, provider, (BatchSpanProcessor(NullExporter()),)),
            "vanilla, OTLP batch 512": Variant(
                "v512", engine, provider, (BatchSpanProcessor(otlp(), max_export_batch_size=512),)
            ),
            "vanilla, OTLP batch 64": Variant(
                "v64", engine, provider, (BatchSpanProcessor(otlp(), max_export_batch_size=64),)
            ),
            "otel-dbperf, exporter off": Variant("d0", engine, provider, ours(NullExporter(), 512)),
            "otel-dbperf, OTLP batch 512": Variant("d512", engine, provider, ours(otlp(), 512)),
            "otel-dbperf, OTLP batch 64": Variant("d64", engine, provider, ours(otlp(), 64)),
            "otel-dbperf, OTLP 512, stock enc.": Variant("s512", engine, provider, ours(otlp(), 512, "stock")),
            "otel-dbperf, OTLP 64, stock enc.": Variant("s64", engine, provider, ours(otlp(), 64, "stock")),
            "otel-dbperf, OTLP 512, pause 0": Variant("p0", engine, provider, ours(otlp(), 512, pause=0.0)),
            "otel-dbperf, OTLP 512, pause 0.1ms": Variant("p1", engine, provider, ours(otlp(), 512, pause=1e-4)),
        }
        processors = [p for v in configs.values() for p in v.processors]
        print(
            f"p99 request latency (ms; {QUERIES_PER_REQUEST} queries per request, SQLite file, {rounds} rounds of "
            f"{per_round} requests per thread per config, configs interleaved in random order)"
        )
        for concurrency in (1, 4):
            samples: dict[str, list[float]] = {k: [] for k in configs}
            round_p99: dict[str, list[float]] = {k: [] for k in configs}
            order = list(configs)
            for r in range(rounds + 1):
                random.shuffle(order)
                for key in order:
                    lat = _latency_round(configs[key], concurrency, per_round)
                    configs[key].flush()  # the round's spans go out before the next config runs
                    if r:  # round 0 is the warm-up
                        samples[key] += lat
                        round_p99[key].append(_p99(lat))
            print(f"  concurrency {concurrency}:")
            for key in configs:
                base = "vanilla, exporter off" if key.startswith("vanilla") else "otel-dbperf, exporter off"
                diff = ""
                if key != base and key != "bare":
                    d = statistics.median(a - b for a, b in zip(round_p99[key], round_p99[base], strict=True))
                    diff = f"  paired vs exporter off {d * 1000:+.2f}"
                p50 = statistics.median(samples[key])
                print(f"    {key:<34} p50 {p50 * 1000:6.2f}  p99 {_p99(samples[key]) * 1000:6.2f}{diff}")
        for p in processors:
            p.shutdown()  # while the receiver still answers
    finally:
        receiver.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _latency_round(v: Variant, concurrency: int, per_thread: int) -> list[float]:
    v.activate()
    out: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        mine = []
        with v.engine.connect() as conn:
            for j in range(per_thread):
                t0 = time.perf_counter()
                v.requests_of(conn, j * QUERIES_PER_REQUEST, lambda i: POINT)
                mine.append(time.perf_counter() - t0)
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# --------------------------------------------------------------------------- encoding cost per attribute

_DROPS = {
    "vanilla span (nothing added)": None,
    "otel-dbperf span": (),
    "without dbperf.query.slow=false": ("dbperf.query.slow",),
    "without code.*": ("code.file.path", "code.line.number", "code.function.name"),
    "without dbperf.query.fingerprint": ("dbperf.query.fingerprint",),
}


class _Capture(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += spans
        return SpanExportResult.SUCCESS


def _encoding_child(which: str, repeat: int, encoder: str = "stock") -> int:
    """Encode one batch of 512 DB spans ``repeat`` times as the OTLP exporter does (callgrind runs this):
    ``stock`` the SDK's encoder, ``fast`` otel-dbperf's (a new encoder, so its caches fill once per run,
    in the first repeat)."""
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    v = build(exporter="null", requests=False)["otel-dbperf"]
    capture = _Capture()
    drop = _DROPS[which]
    if drop is None:
        v.processors = (BatchSpanProcessor(capture),)
    else:
        v.processors = (v.processors[0], BatchSpanProcessor(v.processors[0].wrap_exporter(capture)))
    v.run(BATCH)
    spans = capture.spans[:BATCH]
    if drop:
        for span in spans:
            kept = {k: val for k, val in span.attributes.items() if k not in drop}
            span._attributes = BoundedAttributes(attributes=kept, immutable=True)  # noqa: SLF001
    if encoder == "fast":  # the same bytes (checked in both runs, so the check is not counted)
        assert SpanEncoder().encode(spans) == encode_spans(spans).SerializePartialToString()
        ours = SpanEncoder()
        for _ in range(repeat):
            ours.encode(spans)
        return 0
    for _ in range(repeat):
        encode_spans(spans).SerializePartialToString()
    return 0


def encoding(repeat: int) -> int:
    """Instructions the OTLP protobuf encoder spends per span, with and without the attributes we add:
    the SDK's encoder (``encode_spans(...).SerializePartialToString()``, as its exporter calls it) and
    otel-dbperf's (``DBPERF_OTLP_ENCODER=fast``; the first of the ``repeat`` encodings, which fills its
    caches and is checked equal to the stock bytes, is counted)."""
    per_span: dict[tuple[str, str], float] = {}
    print(f"instructions per span to encode (callgrind, a batch of {BATCH} DB spans encoded {repeat} times)")
    print(f"  {'':<36}{'stock':>9}{'ours':>9}  ours/stock")
    for which in _DROPS:
        for encoder in ("stock", "fast"):
            base = [sys.executable, __file__, "--encoding-child", which, "--encoder", encoder]
            zero = _callgrind([*base, "--queries", "0"])[1]
            full = _callgrind([*base, "--queries", str(repeat)])[1]
            per_span[which, encoder] = (full - zero) / repeat / BATCH
        stock, fast = per_span[which, "stock"], per_span[which, "fast"]
        print(f"  {which:<36}{stock:>9,.0f}{fast:>9,.0f}  {fast / stock:.3f}", flush=True)
    for encoder in ("stock", "fast"):
        ours = per_span["otel-dbperf span", encoder]
        print(f"  against the otel-dbperf span, {encoder} encoder:")
        for which in _DROPS:
            if which != "otel-dbperf span":
                print(f"    {which:<34}{per_span[which, encoder] - ours:>+9,.0f}")
    return 0


# --------------------------------------------------------------------------- breakdown, memory


class _EmptyProcessor(SpanProcessor):
    """A processor that does nothing: the cost of being called."""


class _ClocksProcessor(SpanProcessor):
    """Only the two thread-CPU clock reads that per-query CPU time needs."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        time.thread_time_ns()

    def _on_ending(self, span: Any) -> None:
        time.thread_time_ns()


class _WalkProcessor(SpanProcessor):
    """Only the frame walk to the application frame that code.* needs."""

    def __init__(self) -> None:
        self._app = AppCode((HERE,))

    def _on_ending(self, span: Any) -> None:
        found = self._app.first_app_frame(sys._getframe(3))  # noqa: SLF001
        if found is not None:
            location_of(found)


def breakdown(rounds: int, block: int) -> int:
    """Each piece of the request-thread cost alone, against vanilla, paired (null exporter)."""
    v = build(exporter="null")
    bare, vanilla, ours = v["bare"], v["vanilla"], v["otel-dbperf"]

    def alone(name: str, processor: SpanProcessor) -> Variant:
        return Variant(name, vanilla.engine, vanilla.provider, (processor, BatchSpanProcessor(NullExporter())))

    variants = [
        bare,
        vanilla,
        alone("empty processor", _EmptyProcessor()),
        alone("CPU clocks only", _ClocksProcessor()),
        alone("frame walk only", _WalkProcessor()),
        Variant("otel-dbperf, no duplicate digests", ours.engine, ours.provider, ours.processors),
        ours,
    ]
    for x in variants:
        x.run(1000)
        x.thread_ns.clear()
        x.total_ns.clear()
    for _ in range(rounds):
        random.shuffle(variants)
        for x in variants:
            x.run(block)
    base = paired(vanilla, bare, "thread_ns")
    print(f"request thread, paired medians over {rounds} rounds; vanilla tracing adds {base:.2f} us/query")
    for x in variants:
        if x not in (bare, vanilla):
            extra = paired(x, vanilla, "thread_ns")
            print(f"  {x.name:<18} +{extra:6.2f} us/query  ({extra / base:.3f} of vanilla)")
    return 0


def memory(queries: int, distinct: int) -> int:
    ours = build(exporter="null")["otel-dbperf"]
    statements = [text(f"SELECT name FROM authors WHERE id = :id AND {i} = {i}") for i in range(distinct)]
    step = max(queries // 10, QUERIES_PER_REQUEST)
    print(f"otel-dbperf: {queries} queries over {distinct} distinct statements; RSS after each {step}")
    samples = []
    done = 0
    while done < queries:
        ours.run(step, lambda i, base=done: statements[(base + i) % distinct])
        done += step
        samples.append(rss_bytes())
        print(f"  {done:>9} queries  RSS {samples[-1] / 2**20:8.1f} MiB")
    growth = (samples[-1] - samples[len(samples) // 2]) / 2**20
    print(f"RSS growth over the second half: {growth:+.1f} MiB")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--block", type=int, default=200, help="queries per variant per round")
    parser.add_argument("--samples", default="request", choices=("request", "query", "off"))
    parser.add_argument("--exporter", default="otlp", choices=("otlp", "null"))
    parser.add_argument("--instructions", action="store_true", help="the gate: callgrind instruction counts")
    parser.add_argument("--cpu-rounds", type=int, default=60, help="with --instructions: CPU-time rounds beside")
    parser.add_argument("--queries", type=int, default=1000, help="with --instructions: queries per run")
    parser.add_argument(
        "--depth",
        help="frames between the request and the application frame issuing each query, comma-separated "
        "(--instructions: each, default 10,20,40; other modes: the first, default 20)",
    )
    parser.add_argument("--save", help="with --instructions: write every count to this JSON file")
    parser.add_argument("--reuse", help="with --instructions: take bare and vanilla counts from this JSON file")
    parser.add_argument(
        "--live-export",
        action="store_true",
        help="with --instructions: the batch processors export on their schedule during the measured loop "
        "(before issue 27; the request-thread count then follows the machine's load)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="with --instructions: the scenarios measured (comma-separated: requests, no request, metrics)",
    )
    parser.add_argument(
        "--stock-in",
        default="requests",
        help="with --instructions: scenarios (comma-separated: requests, no request, metrics; empty: none) "
        "where otel-dbperf with DBPERF_OTLP_ENCODER=stock is counted too",
    )
    parser.add_argument("--latency", action="store_true", help="p99 request latency, concurrency 1 and 4")
    parser.add_argument("--probe", action="store_true", help="the independent probe's setup")
    parser.add_argument("--venv", default=os.path.join(os.path.dirname(HERE), ".venv-sa20"), help="with --probe")
    parser.add_argument("--breakdown", action="store_true", help="the request-thread cost piece by piece")
    parser.add_argument("--memory", type=int, default=0, help="run the memory-bound check with this many queries")
    parser.add_argument("--distinct", type=int, default=100_000)
    parser.add_argument("--encoding", action="store_true", help="OTLP encoding cost per added attribute")
    parser.add_argument(
        "--checkout", action="store_true", help="each request checks out a connection and runs one transaction"
    )
    parser.add_argument("--encoding-child", help=argparse.SUPPRESS)
    parser.add_argument("--encoder", default="stock", choices=("stock", "fast"), help=argparse.SUPPRESS)
    parser.add_argument("--instructions-child", help=argparse.SUPPRESS)
    parser.add_argument("--gc", default="on", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    depths = tuple(int(x) for x in args.depth.split(",") if x) if args.depth else DEPTHS
    global DEPTH
    DEPTH = depths[0] if args.depth else DEPTH
    if args.checkout:
        os.environ["BENCH_CHECKOUT"] = "1"  # the children (callgrind runs) inherit it
        global CHECKOUT
        CHECKOUT = True
    if args.receiver:
        return _receiver_main()
    if args.instructions_child:
        return _instructions_child(
            args.instructions_child, args.queries, args.gc == "off", args.port, args.samples, args.exporter
        )
    if args.encoding_child:
        return _encoding_child(args.encoding_child, args.queries, args.encoder)
    if args.encoding:
        return encoding(20)
    if args.instructions:
        stock_in = tuple(x for x in args.stock_in.split(",") if x)
        scenarios = tuple(x for x in args.scenarios.split(",") if x in SCENARIOS) or SCENARIOS
        return instructions(
            args.queries,
            args.samples,
            args.exporter,
            args.cpu_rounds,
            stock_in,
            scenarios,
            depths,
            args.save,
            args.reuse,
            not args.live_export,
        )
    if args.latency:
        return latency(args.rounds, 50)
    if args.probe:
        from probe import probe  # bench/probe.py

        return probe(args.queries, args.venv)
    if args.breakdown:
        return breakdown(args.rounds, args.block)
    if args.memory:
        return memory(args.memory, args.distinct)
    cpu_time(args.rounds, args.block, args.samples, args.exporter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
