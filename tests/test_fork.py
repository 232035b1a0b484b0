"""fork() while otel-dbperf's threads hold their locks: every child traces, flushes and exits."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, BIN, base_env
from fork_app import wait_all
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from otel_dbperf import DbPerfSpanProcessor, Settings, _explain, _guard, _prefork
from otel_dbperf import attributes as A
from otel_dbperf._pipeline import processor as _processor
from otel_dbperf._pipeline import record as _record
from otel_dbperf._pipeline.derive import build_deriver
from otel_dbperf.exporters.otlp_json_file import OTLPJsonFileSpanExporter
from otel_dbperf.profiler import HistorySink, QueryHistory

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILDREN = 20
CHILD_DEADLINE_S = 60.0  # a hang detector, not a timing assertion: a healthy child takes well under 1 s


class SlowExporter(SpanExporter):
    """Keeps the export thread busy; no lock of its own (a child must not hang on the test's code)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        time.sleep(0.002)
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


class Pipeline:
    """What the configurator builds, with every lock-owning part of otel-dbperf in it."""

    def __init__(self, tmp_path: Path) -> None:
        settings = Settings(app_paths=(str(tmp_path),), slow_query_threshold_ms=0, explain=True)
        self.processor = DbPerfSpanProcessor(settings)
        self.provider = TracerProvider()
        self.provider.add_span_processor(self.processor)
        self.slow = SlowExporter()
        self.file = OTLPJsonFileSpanExporter(str(tmp_path / "spans.jsonl"))
        for exporter in (self.slow, self.file):  # two exporters: take() uses the export lock
            wrapped = self.processor.wrap_exporter(exporter)
            self.provider.add_span_processor(BatchSpanProcessor(wrapped, max_export_batch_size=16))
        self.tracer = self.provider.get_tracer("fork-test")
        self.meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
        self.history = QueryHistory(100)
        self.deriver = build_deriver(self.processor.thresholds, self.meters, [HistorySink(self.history)])
        self.processor.attach_deriver(self.deriver.submit)
        self.hooks = _prefork.ForkHooks(self.meters, self.deriver)
        self.explainer = _explain.Explainer()

    def request(self, name: str, queries: int) -> None:
        with self.tracer.start_as_current_span(name, kind=SpanKind.SERVER):
            for i in range(queries):
                with self.tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as db:
                    db.set_attribute("db.system.name", "postgresql")
                    db.set_attribute("db.query.text", f"SELECT * FROM t WHERE id = {i} AND s = 'secret'")

    def locks(self) -> list[Any]:
        """Every lock of otel-dbperf's reachable from here (read when used: the child's are new), in the
        order the code nests them (the derivation thread analyses a request under its own lock)."""
        return [
            _processor._SHARED_LOCK,
            _processor._OVERFLOW_LOCK,
            self.deriver._lock,
            _record.ANALYSIS_LOCK,
            self.history._lock,
            self.explainer._lock,
            self.explainer._limiter._lock,
            _explain._install_lock,
            _guard._lock,
            self.file._lock,
        ]

    def shutdown(self) -> None:
        self.provider.shutdown()
        self.meters.shutdown()


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path)
    yield p
    p.shutdown()


def _child(p: Pipeline, index: int, out: int) -> None:
    """Runs in the forked child: what a worker does, then what interpreter exit does."""
    _guard.RERAISE = False
    inherited = len(p.processor._open) + len(p.processor._done) + len(p.deriver.queue)
    p.request(f"GET /child/{index}", 6)
    flushed = p.provider.force_flush(30_000)
    p.deriver.drain_at_exit()
    p.history.add(0.1, "SELECT 1")
    p.explainer.count("explained")
    _guard.internal_error("fork-test", RuntimeError("reported, not raised"))
    mine = [s for s in p.slow.spans if s.name == f"GET /child/{index}"]
    enriched = [s for s in p.slow.spans if s.attributes and A.QUERY_FINGERPRINT in s.attributes]
    leaked = any("secret" in s.to_json() for s in p.slow.spans)
    p.provider.shutdown()
    report = {
        "flushed": flushed,
        "root": len(mine),
        "count": mine[0].attributes[A.DB_QUERY_COUNT] if mine else None,
        "enriched": len(enriched),
        "leaked": leaked,
        "history": p.history.totals()["total_queries"],
        "inherited": inherited,
    }
    os.write(out, (json.dumps(report) + "\n").encode())


def test_children_forked_while_every_lock_is_held_still_trace_and_exit(pipeline: Pipeline) -> None:
    stop = threading.Event()

    def busy() -> None:  # heavy export: the export threads and the deriver are always at work
        while not stop.is_set():
            pipeline.request("GET /parent", 20)

    workers = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    # The spans keep their exporters and the deriver busy while the locks are taken below; the
    # producers stop first: a drain empties the queue before it lets go of its lock, so a producer
    # faster than the deriver would keep the holder waiting (tests/apps/fork_app.py forks while
    # producers run, without holding locks).
    stop.set()
    for w in workers:
        w.join(10)
    # The deterministic part: a parent thread holds every lock of ours while the children fork.
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        taken = []
        try:
            for lock in pipeline.locks():
                if not lock.acquire(timeout=30):  # never blocks for good: later tests need these locks
                    return
                taken.append(lock)
            held.set()
            release.wait()
        finally:
            for lock in reversed(taken):
                lock.release()

    holding = threading.Thread(target=holder, daemon=True)
    holding.start()
    read_end, write_end = os.pipe()
    pids = []
    try:
        assert held.wait(30), "the holder could not take every lock (one is held for good under load)"
        for i in range(CHILDREN):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    os.close(read_end)
                    _child(pipeline, i, write_end)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
    finally:
        release.set()
        stop.set()
        os.close(write_end)
    codes, hung = wait_all(pids, CHILD_DEADLINE_S)
    with os.fdopen(read_end) as reports_file:
        reports = [json.loads(line) for line in reports_file]
    for w in [*workers, holding]:
        w.join(10)
    assert hung == 0, f"{hung} of {CHILDREN} children hung"
    assert codes == [0] * CHILDREN
    assert len(reports) == CHILDREN
    for report in reports:
        assert report["flushed"] is True and report["root"] == 1 and report["count"] == 6
        assert report["enriched"] >= 6 and report["leaked"] is False and report["history"] >= 1
        assert report["inherited"] == 0  # the parent's open spans, records and queue are the parent's
    # and the parent goes on: its locks were only borrowed
    pipeline.request("GET /after", 2)
    assert pipeline.provider.force_flush(10_000)
    assert any(s.name == "GET /after" for s in pipeline.slow.spans)


def test_children_of_an_instrumented_app_exit_while_the_parent_exports(receiver: Any, tmp_path: Path) -> None:
    """The real thing: opentelemetry-instrument, the OTLP exporter to a receiver, normal exits."""
    env = base_env(receiver, OTEL_METRICS_EXPORTER="otlp", OTEL_METRIC_EXPORT_INTERVAL="200")
    cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "fork_app.py", str(CHILDREN)]
    proc = subprocess.run(cmd, cwd=APPS, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["hung"] == 0 and result["exited"] == [0] * CHILDREN, (result, proc.stderr[-2000:])
    names = {f"/child/{i}" for i in range(CHILDREN)}
    spans = receiver.wait_for(lambda s: names <= {x["name"] for x in s}, timeout=120)
    roots = [s for s in spans if s["name"] in names]
    assert all(r["attributes"][A.DB_QUERY_COUNT] == 6 for r in roots)
    assert not any(b"secret-" in body for body in receiver.raw)
