"""Cost of big statements: a bulk INSERT of ~118 KB of inline literals, each one distinct.

Uninstrumented, vanilla contrib SQLAlchemy tracing and otel-dbperf (span processor, exporter
wrapper and the metrics derivation thread, which all look at each statement) run in one
process, interleaved in short rounds (each variant runs a block of statements back to back, in
random order), like bench/overhead.py: the figures are medians over rounds, per statement.

- request thread: CPU time of the thread that issues the statements;
- total: process CPU time, each round ending with the span export (force_flush) and the metric
  derivation (drain), so everything otel-dbperf does for the round's statements is in it.

It also prints the cost of one uncached analysis per dialect (``_sql._analyze``), and how many
analyses otel-dbperf ran per statement.

    python bench/big_statements.py [--rounds 15] [--block 20] [--kib 118]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import StaticPool

from otel_dbperf import DbPerfSpanProcessor, Settings, _sql
from otel_dbperf._pipeline.derive import build_deriver
from otel_dbperf.metrics import default_views

_serial = itertools.count()
_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
_COUNTER = NoOpMeterProvider().get_meter("bench").create_up_down_counter("c")


class NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def statement(kib: int) -> str:
    """A distinct bulk INSERT of about ``kib`` KiB: numbers, strings, one with a backslash."""
    n = next(_serial)
    rows, size, i = [], 0, 0
    while size < kib * 1024:
        row = f"({n * 100_000 + i}, 'user-{n}-{i}@example.com', 'C:\\dir\\{i}', {i * 1.25})"
        rows.append(row)
        size += len(row) + 2
        i += 1
    return "INSERT INTO big (id, email, path, score) VALUES " + ", ".join(rows)


def make_engine() -> Engine:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE big (id INTEGER, email TEXT, path TEXT, score REAL)"))
    return engine


class Variant:
    def __init__(self, name: str, engine: Engine, flush: Callable[[], None]) -> None:
        self.name, self.engine, self.flush = name, engine, flush
        self.request: list[float] = []
        self.total: list[float] = []


def build() -> tuple[list[Variant], Any]:
    plain = make_engine()
    variants = [Variant("uninstrumented", plain, lambda: None)]

    vanilla_provider = TracerProvider()
    vanilla_provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    vanilla = make_engine()
    EngineTracer(vanilla_provider.get_tracer(_SCOPE), vanilla, _COUNTER)
    variants.append(Variant("vanilla tracing", vanilla, lambda: vanilla_provider.force_flush()))

    settings = Settings()
    provider = TracerProvider()
    processor = DbPerfSpanProcessor(settings)
    provider.add_span_processor(processor)
    provider.add_span_processor(BatchSpanProcessor(processor.wrap_exporter(NullExporter())))
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()], views=default_views())
    deriver = build_deriver(processor.thresholds, meters)
    processor.attach_deriver(deriver.submit)
    ours = make_engine()
    EngineTracer(provider.get_tracer(_SCOPE), ours, _COUNTER)

    def flush() -> None:
        provider.force_flush()
        deriver.drain()

    variants.append(Variant("otel-dbperf", ours, flush))
    return variants, deriver


def run(rounds: int, block: int, kib: int) -> None:
    variants, _ = build()
    analyses = [0]
    real = _sql._analyze

    def counting(*args: Any) -> Any:
        analyses[0] += 1
        return real(*args)

    _sql._analyze = counting  # type: ignore[assignment]
    sample = statement(kib)
    print(f"statement: {len(sample):,} characters, {block} per variant per round, {rounds} rounds")
    for _ in range(rounds):
        for variant in random.sample(variants, len(variants)):
            batch = [statement(kib) for _ in range(block)]
            t0, p0 = time.thread_time(), time.process_time()
            with variant.engine.begin() as conn:
                for sql in batch:
                    conn.execute(text(sql))
            t1 = time.thread_time()
            variant.flush()
            p1 = time.process_time()
            variant.request.append((t1 - t0) / block)
            variant.total.append((p1 - p0) / block)
            with variant.engine.begin() as conn:
                conn.execute(text("DELETE FROM big"))
    base = variants[0]
    print(f"{'variant':<16} {'request thread':>16} {'total':>12} {'total - uninstrumented':>24}")
    for v in variants:
        req, tot = statistics.median(v.request) * 1e3, statistics.median(v.total) * 1e3
        extra = statistics.median(t - b for t, b in zip(v.total, base.total, strict=True)) * 1e3
        print(f"{v.name:<16} {req:>13.2f} ms {tot:>9.2f} ms {extra:>21.2f} ms")
    print(f"otel-dbperf analyses per statement: {analyses[0] / (rounds * block):.2f}")
    _sql._analyze = real  # type: ignore[assignment]
    dialect_aware = hasattr(_sql, "dialect_of")  # also runs against older otel-dbperf checkouts
    for dialect in ("postgresql", "mysql", "sqlite", "other") if dialect_aware else ("any",):
        times = []
        for _ in range(5):
            sql = statement(kib)
            t0 = time.perf_counter()
            _sql._analyze(sql, 4096, dialect) if dialect_aware else _sql._analyze(sql, 4096)
            times.append(time.perf_counter() - t0)
        print(
            f"one analysis, {dialect:<10}: {statistics.median(times) * 1e3:.2f} ms"
            f" (first {_sql._MAX_SCAN:,} characters)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--kib", type=int, default=118)
    args = parser.parse_args()
    run(args.rounds, args.block, args.kib)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
