"""Per-query overhead: uninstrumented vs vanilla contrib tracing vs otel-dbperf defaults.

Same process, variants interleaved in short rounds (every variant runs a block of
queries back to back, in random order), and the figures are medians of the
per-round differences: this machine's speed drifts by tens of percent over
seconds, and paired differences cancel the drift. SQLite in-memory point SELECT
issued ~20 frames deep, 10 queries per request span (their parameters alternate, so
otel-dbperf digests every query's parameters and 8 of 10 are exact duplicates). Vanilla and otel-dbperf
share one engine and instrumentation; only the span processors differ.

- request thread: CPU time of the thread that issues the queries;
- total: process CPU time including the BatchSpanProcessor export thread; each
  round ends with force_flush, so the export-side work of the round is in it. The
  exporter drops the spans (otel-dbperf's own work only), or with --encode encodes
  them to OTLP protobuf as the OTLP exporter does, without sending (then the cost
  of encoding the attributes otel-dbperf adds is in the figure too).

Ratios (design.md section 6): (otel-dbperf - vanilla) / (vanilla - uninstrumented);
budget <= 0.10 on the request thread, <= 0.30 in total.

    python bench/overhead.py [--rounds 300] [--block 200] [--encode] [--no-resource-samples]
    python bench/overhead.py --metrics             # adds a variant that also derives the section 5 metrics
    python bench/overhead.py --breakdown           # empty processor, CPU clocks alone, frame walk alone
    python bench/overhead.py --instructions        # callgrind instruction counts (needs valgrind)
    python bench/overhead.py --memory 1000000 --distinct 100000
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import StaticPool

from otel_dbperf import DbPerfSpanProcessor, Settings, _duplicates
from otel_dbperf._location import AppCode, location_of
from otel_dbperf._resources import rss_bytes

QUERIES_PER_REQUEST = 10
DEPTH = 20


class NullExporter(SpanExporter):
    """Drops the spans: the export-side figure is then otel-dbperf's own work only."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class EncodingExporter(SpanExporter):
    """What the OTLP exporter does on the export thread, minus the network: encode to protobuf."""

    def __init__(self) -> None:
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS


def make_engine() -> Engine:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO authors VALUES (1, 'ann'), (2, 'bob')"))
    return engine


def traced(provider: TracerProvider) -> Engine:
    engine = make_engine()
    counter = NoOpMeterProvider().get_meter("bench").create_up_down_counter("c")
    EngineTracer(provider.get_tracer("opentelemetry.instrumentation.sqlalchemy"), engine, counter)
    return engine


POINT = text("SELECT name FROM authors WHERE id = :id")


def deep(depth: int, fn: Callable[[], Any]) -> Any:
    if depth:
        return deep(depth - 1, fn)
    return fn()


class Variant:
    """One way to run the same queries; the traced variants share one engine and tracer.

    Sharing the engine keeps SQLAlchemy's caches and the instrumentation identical,
    so the difference between vanilla and otel-dbperf is only the span processors,
    which are swapped in before each of the variant's rounds.
    """

    def __init__(
        self,
        name: str,
        engine: Engine,
        provider: TracerProvider | None = None,
        processors: tuple[Any, ...] = (),
        deriver: Any = None,
        duplicates: bool = False,
    ) -> None:
        self.name = name
        self.duplicates = duplicates  # otel-dbperf's parameter-digest listener (exact duplicates) on
        self.deriver = deriver
        self.engine = engine
        self.provider = provider
        self.processors = processors
        self.tracer = provider.get_tracer("bench") if provider else None
        self.thread_ns: list[float] = []
        self.total_ns: list[float] = []

    def activate(self) -> None:
        if self.provider is not None:
            self.provider._active_span_processor._span_processors = self.processors  # noqa: SLF001
        # class-level, so on for otel-dbperf's variants only (vanilla shares the engine)
        if self.duplicates:
            _duplicates.install()
        else:
            _duplicates.uninstall()

    def run(self, n: int, statement: Callable[[int], Any] = lambda i: POINT) -> None:
        self.activate()
        tracer = self.tracer
        with self.engine.connect() as conn:
            cpu0, proc0 = time.thread_time_ns(), time.process_time_ns()
            for start in range(0, n, QUERIES_PER_REQUEST):
                if tracer is not None:
                    with tracer.start_as_current_span("GET /bench", kind=SpanKind.SERVER):
                        for i in range(start, start + QUERIES_PER_REQUEST):
                            deep(DEPTH, lambda i=i: conn.execute(statement(i), {"id": i % 2 + 1}).scalar())
                else:
                    for i in range(start, start + QUERIES_PER_REQUEST):
                        deep(DEPTH, lambda i=i: conn.execute(statement(i), {"id": i % 2 + 1}).scalar())
            cpu1 = time.thread_time_ns()
            for processor in self.processors:
                processor.force_flush()
            if self.deriver is not None:  # the round's metric derivation is in its total
                self.deriver.drain()
            proc1 = time.process_time_ns()
        self.thread_ns.append((cpu1 - cpu0) / n)
        self.total_ns.append((proc1 - proc0) / n)


def build(
    exporter: type[SpanExporter] = NullExporter, resource_samples: bool = True, metrics: bool = False
) -> tuple[Variant, ...]:
    here = os.path.dirname(os.path.abspath(__file__))
    settings = Settings(app_paths=(here,), resource_samples=resource_samples)
    provider = TracerProvider()
    engine = traced(provider)
    dbperf = DbPerfSpanProcessor(settings)
    variants = (
        Variant("uninstrumented", make_engine()),
        Variant("vanilla contrib", engine, provider, (BatchSpanProcessor(exporter()),)),
        Variant(
            "otel-dbperf",
            engine,
            provider,
            (dbperf, BatchSpanProcessor(dbperf.wrap_exporter(exporter()))),
            duplicates=True,
        ),
    )
    if not metrics:
        return variants
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otel_dbperf._metrics import SpanDeriver
    from otel_dbperf.metrics import default_views

    meters = MeterProvider(metric_readers=[InMemoryMetricReader()], views=default_views())
    with_metrics = DbPerfSpanProcessor(settings)
    deriver = SpanDeriver(settings, meters)
    with_metrics.attach_deriver(deriver.submit)
    processors = (with_metrics, BatchSpanProcessor(with_metrics.wrap_exporter(exporter())))
    return (*variants, Variant("+ metrics", engine, provider, processors, deriver, duplicates=True))


def overhead(rounds: int, block: int, encode: bool, resource_samples: bool, metrics: bool = False) -> int:
    variants = build(EncodingExporter if encode else NullExporter, resource_samples, metrics)
    uninst, vanilla, ours = variants[:3]
    for v in variants:  # warm-up: caches, imports, first connect
        v.run(1000)
        v.thread_ns.clear()
        v.total_ns.clear()
    order = list(variants)
    for _ in range(rounds):
        random.shuffle(order)
        for v in order:
            v.run(block)

    def paired(a: Variant, b: Variant, field: str) -> float:
        """Median over rounds of (a - b): each round's variants ran back to back."""
        return statistics.median(x - y for x, y in zip(getattr(a, field), getattr(b, field), strict=True)) / 1000

    print(
        f"python {sys.version.split()[0]}; {rounds} rounds, each running every variant for {block} queries "
        f"in random order; SQLite in-memory point SELECT {DEPTH} frames deep, {QUERIES_PER_REQUEST} per request span"
    )
    print("otel-dbperf settings: defaults" + ("" if resource_samples else " except DBPERF_RESOURCE_SAMPLES=false"))
    print(
        "exporter: OTLP protobuf encoding, not sent (export side includes encoding the added attributes)"
        if encode
        else "exporter: null (export side is otel-dbperf's own enrichment work only)"
    )
    print(f"{'variant':<18}{'request thread us/query':>26}{'total CPU us/query':>22}   (medians)")
    for v in variants:
        t, c = statistics.median(v.thread_ns) / 1000, statistics.median(v.total_ns) / 1000
        print(f"{v.name:<18}{t:>26.2f}{c:>22.2f}")
    vt, vc = paired(vanilla, uninst, "thread_ns"), paired(vanilla, uninst, "total_ns")
    ot, oc = paired(ours, vanilla, "thread_ns"), paired(ours, vanilla, "total_ns")
    print(f"vanilla tracing adds    {vt:7.2f} us/query on the request thread, {vc:7.2f} us in total (paired medians)")
    print(f"otel-dbperf adds on top {ot:7.2f} us/query on the request thread, {oc:7.2f} us in total (paired medians)")
    req_ratio, tot_ratio = ot / vt, oc / vc
    print(f"request-thread ratio {req_ratio:.3f} (budget <= 0.10): {'OK' if req_ratio <= 0.10 else 'OVER'}")
    print(f"total CPU ratio      {tot_ratio:.3f} (budget <= 0.30): {'OK' if tot_ratio <= 0.30 else 'OVER'}")
    if metrics:
        met = variants[3]
        mt, mc = paired(met, ours, "thread_ns"), paired(met, ours, "total_ns")
        at, ac = paired(met, vanilla, "thread_ns"), paired(met, vanilla, "total_ns")
        print(
            f"metric derivation adds  {mt:7.2f} us/query on the request thread, {mc:7.2f} us in total (paired medians)"
        )
        print(f"  as a share of vanilla: {mt / vt:.3f} request thread, {mc / vc:.3f} total")
        print(f"otel-dbperf with metrics: request-thread ratio {at / vt:.3f}, total CPU ratio {ac / vc:.3f}")
    return 0


def memory(queries: int, distinct: int) -> int:
    ours = build()[2]
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


class _EmptyProcessor(SpanProcessor):
    """A processor that does nothing: the cost of being called."""


class _ClocksProcessor(SpanProcessor):
    """Only the two thread-CPU clock reads that dbperf.cpu.time_ms needs."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        time.thread_time_ns()

    def _on_ending(self, span: Any) -> None:
        time.thread_time_ns()


class _WalkProcessor(SpanProcessor):
    """Only the frame walk to the application frame that code.* needs."""

    def __init__(self) -> None:
        self._app = AppCode((os.path.dirname(os.path.abspath(__file__)),))

    def _on_ending(self, span: Any) -> None:
        found = self._app.first_app_frame(sys._getframe(3))
        if found is not None:
            location_of(found)


def breakdown(rounds: int, block: int) -> int:
    """Each piece of the request-thread cost alone, against vanilla, paired as in the default mode."""
    uninst, vanilla, ours = build()

    def alone(name: str, processor: SpanProcessor) -> Variant:
        return Variant(name, vanilla.engine, vanilla.provider, (processor, BatchSpanProcessor(NullExporter())))

    variants = [
        uninst,
        vanilla,
        alone("empty processor", _EmptyProcessor()),
        alone("CPU clocks only", _ClocksProcessor()),
        alone("frame walk only", _WalkProcessor()),
        Variant("otel-dbperf, no duplicate digests", ours.engine, ours.provider, ours.processors),
        ours,
    ]
    for v in variants:
        v.run(1000)
        v.thread_ns.clear()
        v.total_ns.clear()
    for _ in range(rounds):
        order = list(variants)
        random.shuffle(order)
        for v in order:
            v.run(block)
    base = statistics.median(a - b for a, b in zip(vanilla.thread_ns, uninst.thread_ns, strict=True)) / 1000
    print(f"request thread, paired medians over {rounds} rounds; vanilla tracing adds {base:.2f} us/query")
    for v in variants[2:]:
        extra = statistics.median(a - b for a, b in zip(v.thread_ns, vanilla.thread_ns, strict=True)) / 1000
        print(f"  {v.name:<18} +{extra:6.2f} us/query  ({extra / base:.3f} of vanilla)")
    return 0


def _instructions_child(variant: str, n: int) -> int:
    """Run ``n`` queries of one variant (the parent runs this under callgrind)."""
    if variant == "otel-dbperf + metrics":
        with_metrics = build(metrics=True)[3]
        with_metrics.run(500)
        if n:
            with_metrics.run(n)
        return 0
    uninst, vanilla, ours = build()
    if variant == "otel-dbperf request thread":  # the processor, with a plain (non-enriching) exporter
        dbperf = DbPerfSpanProcessor(ours.processors[0].settings)
        ours.processors = (dbperf, BatchSpanProcessor(NullExporter()))
    chosen = {"uninstrumented": uninst, "vanilla contrib": vanilla}.get(variant, ours)
    chosen.run(500)
    if n:
        chosen.run(n)
    return 0


def instructions(n: int) -> int:
    """Instructions per query counted by callgrind: deterministic, whatever the machine's load."""
    import shutil
    import subprocess

    if not shutil.which("valgrind"):
        print("valgrind not found (apt-get install valgrind)")
        return 1
    counts: dict[str, float] = {}
    variants = [
        "uninstrumented",
        "vanilla contrib",
        "otel-dbperf request thread",
        "otel-dbperf",
        "otel-dbperf + metrics",
    ]
    for variant in variants:
        totals = []
        for queries in (0, n):
            out = subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--callgrind-out-file=/dev/null",
                    sys.executable,
                    __file__,
                    "--instructions-child",
                    variant,
                    "--queries",
                    str(queries),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stderr
            totals.append(int(out.split("Collected : ")[1].split()[0]))
        counts[variant] = (totals[1] - totals[0]) / n
        print(f"{variant:<28}{counts[variant]:>12,.0f} instructions/query")
    vanilla = counts["vanilla contrib"] - counts["uninstrumented"]
    request = counts["otel-dbperf request thread"] - counts["vanilla contrib"]
    total = counts["otel-dbperf"] - counts["vanilla contrib"]
    print(
        f"vanilla tracing adds {vanilla:,.0f}; otel-dbperf adds {request:,.0f} on the request thread "
        f"({request / vanilla:.3f}) and {total:,.0f} in total ({total / vanilla:.3f})"
    )
    metrics = counts["otel-dbperf + metrics"] - counts["otel-dbperf"]
    print(
        f"metric derivation adds {metrics:,.0f} ({metrics / vanilla:.3f}); otel-dbperf with metrics in total "
        f"{total + metrics:,.0f} ({(total + metrics) / vanilla:.3f})"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--block", type=int, default=200, help="queries per variant per round")
    parser.add_argument("--encode", action="store_true", help="encode spans to OTLP protobuf on the export side")
    parser.add_argument(
        "--no-resource-samples", action="store_true", help="otel-dbperf with DBPERF_RESOURCE_SAMPLES=false"
    )
    parser.add_argument("--breakdown", action="store_true", help="the request-thread cost piece by piece")
    parser.add_argument("--metrics", action="store_true", help="add a variant that also derives the metrics")
    parser.add_argument("--instructions", action="store_true", help="count instructions with callgrind instead")
    parser.add_argument("--instructions-child", help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, default=3000, help="with --instructions: queries per variant")
    parser.add_argument("--memory", type=int, default=0, help="run the memory-bound check with this many queries")
    parser.add_argument("--distinct", type=int, default=100_000)
    args = parser.parse_args()
    if args.instructions_child:
        return _instructions_child(args.instructions_child, args.queries)
    if args.instructions:
        return instructions(args.queries)
    if args.breakdown:
        return breakdown(args.rounds, args.block)
    if args.memory:
        return memory(args.memory, args.distinct)
    return overhead(args.rounds, args.block, args.encode, not args.no_resource_samples, args.metrics)


if __name__ == "__main__":
    sys.exit(main())
