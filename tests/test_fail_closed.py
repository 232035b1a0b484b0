"""A DB span whose record is gone is never exported with its raw statement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import text
from support.pipeline import APP_CODE, Pipeline, Traced

from otel_dbperf import DbPerfSpanProcessor, EnrichingSpanExporter, Settings, _guard
from otel_dbperf import attributes as A
from otel_dbperf._pipeline import processor as _processor

SETTINGS = Settings(app_paths=(str(APP_CODE.parent),))


def canary(i: int) -> str:
    return f"CANARY{i:05d}x"


def leaks(spans: list[ReadableSpan], n: int) -> list[str]:
    dumped = "\n".join(s.to_json() for s in spans)
    return [c for c in (canary(i) for i in range(n)) if c in dumped]


def test_evicted_records_are_sanitized_on_the_spot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow collector and a big export queue: records evicted from the pending table before
    the export thread gets to their spans."""
    monkeypatch.setattr(_processor, "MAX_PENDING", 20)
    t = Traced(SETTINGS, batch=True)  # spans wait in the batch queue until the flush below
    n = 300
    with t.tracer.start_as_current_span("GET /many", kind=SpanKind.SERVER), t.engine.connect() as conn:
        for i in range(n):
            conn.execute(text(f"SELECT name FROM authors WHERE name = '{canary(i)}' OR id = {i}")).all()
    spans = t.spans()
    db = [s for s in spans if s.attributes and s.attributes.get("db.system.name", s.attributes.get("db.system"))]
    assert len(db) >= n
    assert leaks(spans, n) == []
    statements = [s.attributes.get("db.statement") or s.attributes.get("db.query.text") for s in db]
    assert all(st == "SELECT name FROM authors WHERE name = ? OR id = ?" for st in statements if st)
    queries = [s for s in db if "authors" in str(s.attributes)]
    assert len(queries) == n and all(A.QUERY_SLOW in s.attributes for s in queries)
    assert len({s.attributes[A.QUERY_FINGERPRINT] for s in queries}) == 1
    exporter = _exporter_of(t)
    assert exporter.unmeasured >= n - 20  # most records were evicted: the case under test happened
    t.provider.shutdown()


def _exporter_of(t: Traced) -> EnrichingSpanExporter:
    (processor,) = [p for p in t.provider._active_span_processor._span_processors if hasattr(p, "_batch_processor")]
    exporter = processor._batch_processor._exporter  # type: ignore[attr-defined]
    assert isinstance(exporter, EnrichingSpanExporter)
    return exporter


def _provider(settings: Settings = SETTINGS) -> tuple[TracerProvider, DbPerfSpanProcessor, InMemorySpanExporter]:
    p = Pipeline(settings)
    return p.provider, p.processor, p.memory


def _db_span(tracer: Any, i: int, **extra: Any) -> Any:
    span = tracer.start_span("SELECT", kind=SpanKind.CLIENT)
    span.set_attribute("db.system.name", "postgresql")
    span.set_attribute("db.query.text", f"SELECT * FROM users WHERE email = '{canary(i)}'")
    for key, value in extra.items():
        span.set_attribute(key, value)
    return span


def test_spans_trimmed_from_the_open_table_are_sanitized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_processor, "MAX_PENDING", 10)
    provider, processor, memory = _provider()
    tracer = provider.get_tracer("t")
    spans = [_db_span(tracer, i) for i in range(100)]  # started long before they end
    assert len(processor._open) <= 10
    for span in spans:
        span.end()
    out = list(memory.get_finished_spans())
    assert len(out) == 100 and leaks(out, 100) == []
    assert {s.attributes["db.query.text"] for s in out} == {"SELECT * FROM users WHERE email = ?"}


def test_statement_text_in_span_and_operation_names_is_rewritten_without_a_record() -> None:
    """contrib names a DB span after the statement's first piece (``VALUES('x')``, ``SELECT'x'``)."""
    provider, processor, memory = _provider()
    tracer = provider.get_tracer("t")
    for i, piece in enumerate((f"VALUES('{canary(7)}')", f"SELECT'{canary(8)}'")):
        span = tracer.start_span(piece, kind=SpanKind.CLIENT)
        span.set_attribute("db.system.name", "postgresql")
        span.set_attribute("db.operation.name", piece)
        span.set_attribute("db.query.text", f"{piece} AS v{i}")
        processor._open.clear()  # its record is gone (evicted, or ended after a fork)
        span.end()
    out = list(memory.get_finished_spans())
    assert len(out) == 2 and leaks(out, 10) == []
    assert all(s.attributes.get("db.operation.name", "VALUES") in ("VALUES", "SELECT") for s in out)


def test_an_internal_error_keeps_no_statement_text_in_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_guard, "RERAISE", False)

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(EnrichingSpanExporter, "_enrich_query", broken)
    provider, _, memory = _provider()
    tracer = provider.get_tracer("t")
    span = tracer.start_span(f"VALUES('{canary(9)}')", kind=SpanKind.CLIENT)
    span.set_attribute("db.system.name", "postgresql")
    span.set_attribute("db.operation.name", f"VALUES('{canary(9)}')")
    span.set_attribute("db.query.text", f"VALUES('{canary(9)}')")
    span.end()
    (out,) = memory.get_finished_spans()
    assert leaks([out], 10) == [] and out.name == "postgresql"


def test_span_started_before_otel_dbperf_existed_is_sanitized() -> None:
    """E.g. a span begun before the processor was added, or ended in a forked child."""
    provider, processor, memory = _provider()
    tracer = provider.get_tracer("t")
    span = _db_span(tracer, 1, **{"db.statement": f"SELECT '{canary(1)}'"})
    processor._open.clear()  # as the after-fork hook does in a child
    span.end()
    (out,) = memory.get_finished_spans()
    assert leaks([out], 2) == []
    assert out.attributes["db.statement"] == out.attributes["db.query.text"] == "SELECT * FROM users WHERE email = ?"
    assert out.attributes[A.QUERY_SLOW] is False


def test_raw_statements_stay_raw_when_sanitizing_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    provider, processor, memory = _provider(Settings(app_paths=(str(APP_CODE.parent),), sanitize_statements=False))
    tracer = provider.get_tracer("t")
    span = _db_span(tracer, 3)
    processor._open.clear()
    span.end()
    (out,) = memory.get_finished_spans()
    assert canary(3) in out.attributes["db.query.text"]  # what the user asked for
    assert len(out.attributes[A.QUERY_FINGERPRINT]) == 16


def test_an_internal_error_in_enrichment_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_guard, "RERAISE", False)

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(EnrichingSpanExporter, "_enrich_query", broken)
    monkeypatch.setattr(EnrichingSpanExporter, "_enrich_unmeasured", broken)
    provider, _, memory = _provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("GET /", kind=SpanKind.SERVER):
        ok = _db_span(tracer, 4)
        ok.end()
        failed = _db_span(tracer, 5)
        failed.add_event("exception", {"exception.message": f"invalid input: {canary(5)}"})
        failed.set_status(Status(StatusCode.ERROR, f"invalid input: {canary(5)}"))
        failed.end()
    out = list(memory.get_finished_spans())
    assert len(out) == 3 and leaks(out, 6) == []
    db = [s for s in out if s.name == "SELECT"]
    assert all("db.query.text" not in s.attributes and s.attributes["db.system.name"] for s in db)
    assert db[1].status.status_code is StatusCode.ERROR and not db[1].events


def test_fail_closed_scan_is_thorough(tmp_path: Path) -> None:
    """The control: without otel-dbperf's exporter wrapper the canary is exported (the scan sees it)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    _db_span(provider.get_tracer("t"), 7).end()
    assert leaks(list(memory.get_finished_spans()), 8) == [canary(7)]
    assert json.loads(memory.get_finished_spans()[0].to_json())["name"] == "SELECT"
