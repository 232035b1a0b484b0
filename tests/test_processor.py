"""The processor and exporter in-process, with real SQLite through SQLAlchemy."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_code import queries
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from support.pipeline import APP_CODE, Pipeline, Traced, line_of, make

import otel_dbperf
from otel_dbperf import _guard
from otel_dbperf import attributes as A
from otel_dbperf._pipeline import processor as _processor
from otel_dbperf._pipeline import record as _record


def _ns(span: ReadableSpan) -> int:
    """A span's duration, as the slow flag measures it."""
    return (span.end_time or 0) - (span.start_time or 0)


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Traced]:
    t = make(tmp_path)
    yield t
    t.provider.shutdown()


def test_code_location_is_the_application_line(traced: Traced) -> None:
    traced.memory.clear()
    assert queries.deep_query(traced.engine, 15) == "ann"
    (span,) = traced.db_spans()
    a = span.attributes
    assert a[A.CODE_FILE_PATH] == str(APP_CODE)
    assert a[A.CODE_LINE_NUMBER] == line_of("point")
    assert a[A.CODE_FUNCTION_NAME] == "point_query"
    assert a[A.QUERY_SLOW] is (_ns(span) >= 100_000_000)  # 100 ms: a loaded machine may stretch even this one
    assert a[A.DB_QUERY_SUMMARY] == "SELECT authors"
    assert re.fullmatch(r"[0-9a-f]{16}", a[A.QUERY_FINGERPRINT])
    assert A.CPU_TIME_MS not in a  # per query only under DBPERF_RESOURCE_SAMPLES=query


def test_slow_query_event_and_bounded_app_only_stacktrace(tmp_path: Path) -> None:
    t = make(tmp_path, slow_query_threshold_ms=50, stacktrace_threshold_ms=100, stacktrace_max_frames=3)
    queries.slow_query(t.engine, 0.01)
    queries.slow_query(t.engine, 0.06)
    queries.slow_query(t.engine, 0.12)
    spans = sorted((s for s in t.db_spans() if "dbperf_sleep" in str(s.attributes.get("db.statement"))), key=_ns)
    assert len(spans) == 3
    # each span as its own duration says (a loaded machine may stretch the 0.01 s one past 50 ms)
    for span in spans:
        assert span.attributes[A.QUERY_SLOW] is (_ns(span) >= 50_000_000), _ns(span)
        assert bool(span.events) is (_ns(span) >= 50_000_000)
        assert (A.CODE_STACKTRACE in span.attributes) is (_ns(span) >= 100_000_000), _ns(span)
    slow = spans[-1]  # the 0.12 s one: slow, with its stack, whatever the machine
    assert slow.attributes[A.QUERY_SLOW] is True
    (event_,) = [e for e in slow.events if e.name == A.EVENT_SLOW_QUERY]
    assert event_.attributes[A.EVENT_DURATION_MS] >= 120
    assert event_.attributes[A.EVENT_THRESHOLD_MS] == 50
    assert event_.attributes[A.CODE_LINE_NUMBER] == line_of("slow")
    stack = slow.attributes[A.CODE_STACKTRACE]
    assert f'"{APP_CODE}", line {line_of("slow")}, in slow_query' in stack
    assert "site-packages" not in stack and "sqlalchemy" not in stack
    assert stack.count('  File "') <= 3  # bounded


def test_n_plus_one_on_the_request_span(traced: Traced) -> None:
    traced.memory.clear()
    with traced.tracer.start_as_current_span("GET /loop", kind=SpanKind.SERVER):
        with traced.tracer.start_as_current_span("handler"):
            queries.n_plus_one(traced.engine, 7)
        queries.slow_query(traced.engine, 0.0)
    spans = traced.spans()
    (root,) = [s for s in spans if s.name == "GET /loop"]
    a = root.attributes
    assert a[A.DB_QUERY_COUNT] == 8
    assert a[A.N_PLUS_ONE_DETECTED] is True
    assert a[A.N_PLUS_ONE_REPEAT_COUNT] == 7  # literals differ, the fingerprint does not
    assert a[A.N_PLUS_ONE_CODE_LOCATION] == f"{APP_CODE}:{line_of('loop')}"
    assert a[A.N_PLUS_ONE_QUERY_SUMMARY] == "SELECT authors"
    db = [s for s in spans if A.QUERY_FINGERPRINT in (s.attributes or {})]
    assert a[A.DB_SLOW_QUERY_COUNT] == sum(s.attributes[A.QUERY_SLOW] for s in db) and a[A.DB_DURATION_MS] > 0
    assert a[A.MEMORY_RSS_BYTES] > 0 and A.MEMORY_RSS_DELTA_BYTES in a and a[A.CPU_TIME_MS] > 0
    loop = [s for s in spans if s.attributes.get(A.CODE_LINE_NUMBER) == line_of("loop")]
    assert [bool(s.attributes.get(A.N_PLUS_ONE)) for s in loop] == [False] * 4 + [True] * 3
    statements = {s.attributes["db.statement"] for s in loop}
    assert statements == {"SELECT name FROM authors WHERE id = ?"}


def test_below_threshold_is_no_n_plus_one(traced: Traced) -> None:
    traced.memory.clear()
    with traced.tracer.start_as_current_span("GET /few", kind=SpanKind.SERVER):
        queries.n_plus_one(traced.engine, 4)
    (root,) = [s for s in traced.spans() if s.name == "GET /few"]
    assert root.attributes[A.N_PLUS_ONE_DETECTED] is False
    assert A.N_PLUS_ONE_FINGERPRINT not in root.attributes


def test_eight_threads_keep_their_own_rollups(tmp_path: Path) -> None:
    t = Traced(batch=True, url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for _ in range(5):
                with t.tracer.start_as_current_span(f"req {k}", kind=SpanKind.SERVER):
                    for _ in range(k):
                        queries.point_query(t.engine, 1)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(1, 9)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    roots = [s for s in t.spans() if s.name.startswith("req ")]
    assert len(roots) == 40
    for r in roots:
        k = int(r.name.split()[1])
        assert r.attributes[A.DB_QUERY_COUNT] == k
        assert r.attributes[A.N_PLUS_ONE_DETECTED] is (k >= 5)


def test_disabled_features_and_raw_statements(tmp_path: Path) -> None:
    t = make(tmp_path, code_location=False, sanitize_statements=False, resource_samples=False)
    with t.tracer.start_as_current_span("GET /", kind=SpanKind.SERVER):
        queries.n_plus_one(t.engine, 1)
    spans = t.spans()
    (db,) = [s for s in spans if A.QUERY_FINGERPRINT in (s.attributes or {})]
    assert db.attributes["db.statement"] == "SELECT name FROM authors WHERE id = 0"
    assert A.CODE_FILE_PATH not in db.attributes
    assert A.CPU_TIME_MS not in db.attributes
    (root,) = [s for s in spans if s.name == "GET /"]
    assert A.MEMORY_RSS_BYTES not in root.attributes and root.attributes[A.DB_QUERY_COUNT] == 1
    assert A.CPU_TIME_MS not in root.attributes


def test_statement_is_bounded(tmp_path: Path) -> None:
    t = make(tmp_path, statement_max_length=64)
    with t.engine.connect() as conn:
        conn.execute(text("SELECT name FROM authors WHERE " + " OR ".join(f"id = {i}" for i in range(200)))).all()
    (db,) = t.db_spans()
    assert len(db.attributes["db.statement"]) <= 64


def test_failing_enrichment_fails_loudly_under_pytest(traced: Traced, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: Any) -> Any:
        raise RuntimeError("deliberate")

    monkeypatch.setattr(traced.processor._app, "walk", boom)
    with pytest.raises(RuntimeError, match="deliberate"):
        queries.point_query(traced.engine, 1)


def test_failing_enrichment_never_reaches_the_app(
    traced: Traced, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*_: Any) -> Any:
        raise RuntimeError("deliberate")

    _guard.RERAISE = False
    before = _guard.error_count()
    monkeypatch.setattr(traced.processor._app, "walk", boom)  # request-thread step
    monkeypatch.setattr(_record, "analyze", boom)  # export-thread step
    monkeypatch.setattr(_processor, "thread_time_ns", boom)  # on_start step
    traced.memory.clear()
    with traced.tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER):
        results = [queries.point_query(traced.engine, i) for i in (1, 2, 1)]
    assert results == ["ann", "bob", "ann"]  # the app's results are unchanged
    assert _guard.error_count() > before
    assert "internal error" in caplog.text
    assert len([s for s in traced.spans() if s.name == "GET /x"]) == 1  # spans still exported


def test_request_state_is_bounded(traced: Traced, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_processor, "MAX_QUERIES_PER_REQUEST", 6)
    traced.memory.clear()
    with traced.tracer.start_as_current_span("GET /many", kind=SpanKind.SERVER):
        queries.n_plus_one(traced.engine, 10)
        queries.slow_query(traced.engine, 0.0)
    (root,) = [s for s in traced.spans() if s.name == "GET /many"]
    assert root.attributes[A.DB_QUERY_COUNT] == 11  # totals stay exact past the cap
    assert root.attributes[A.N_PLUS_ONE_REPEAT_COUNT] == 6  # the analysis sees the capped records
    assert traced.processor._open == {} and traced.processor._done == {}


def test_two_exporters_both_get_enriched_spans(tmp_path: Path) -> None:
    second = InMemorySpanExporter()
    t = Traced(exporters=[second])
    with t.tracer.start_as_current_span("GET /two", kind=SpanKind.SERVER):
        queries.n_plus_one(t.engine, 5)
    for exporter in (t.memory, second):
        spans = exporter.get_finished_spans()
        (root,) = [s for s in spans if s.name == "GET /two"]
        assert root.attributes[A.N_PLUS_ONE_DETECTED] is True
        db = [s for s in spans if s.attributes.get(A.CODE_LINE_NUMBER) == line_of("loop")]
        assert len(db) == 5 and all(s.attributes["db.statement"].endswith("id = ?") for s in db)
    assert t.processor._done == {}


def test_pending_tables_are_bounded(traced: Traced, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_processor, "MAX_PENDING", 50)
    spans = [traced.tracer.start_span(f"never ended {i}") for i in range(500)]
    assert len(traced.processor._open) <= 50
    for span in spans:
        span.end()


@pytest.mark.parametrize(
    ("app_paths", "filename", "expected"),
    [
        (("/srv/app",), "/srv/app/views.py", True),
        (("/srv/app",), "/srv/application/views.py", False),  # a prefix of the name, not of the folder
        (("/srv/app",), "/srv/app/.venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py", False),
        (("/",), "/srv/app/views.py", True),
        (("/",), os.path.join(os.path.dirname(os.__file__), "contextlib.py"), False),  # the standard library
        (("/",), _processor.__file__, False),  # otel-dbperf itself
        (
            (os.path.dirname(otel_dbperf.__file__) + "/report/demo",),
            os.path.dirname(otel_dbperf.__file__) + "/report/demo/shop.py",
            True,
        ),
        (("/usr/lib/python3/dist-packages/shop",), "/usr/lib/python3/dist-packages/shop/app.py", True),  # named
        (("/srv/app",), "<frozen importlib._bootstrap>", False),
    ],
)
def test_application_code(app_paths: tuple[str, ...], filename: str, expected: bool) -> None:
    from otel_dbperf._pipeline.location import AppCode

    assert AppCode(app_paths)._classify(filename) is expected


def test_span_attribute_limits_and_dropped_counts_are_kept(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import SpanLimits

    p = Pipeline(provider_options={"span_limits": SpanLimits(max_span_attributes=6)})
    tracer, memory = p.tracer, p.memory
    with (
        tracer.start_as_current_span("GET /", kind=SpanKind.SERVER),
        tracer.start_as_current_span("q", kind=SpanKind.CLIENT) as db,
    ):
        for i in range(6):
            db.set_attribute(f"extra.{i}", i)
        db.set_attribute("db.system.name", "sqlite")  # 8 set, the newest 6 kept: 2 dropped by the SDK
        db.set_attribute("db.query.text", "SELECT 1")
    (span,) = [s for s in memory.get_finished_spans() if s.name == "q"]
    assert len(span.attributes) == 6  # the user's limit still holds after enrichment
    assert span.dropped_attributes >= 2 + 1  # the SDK's drops, and ours past the limit


@pytest.mark.parametrize("source", [False, True])
def test_stacktrace_has_source_lines_only_when_asked(tmp_path: Path, source: bool) -> None:
    t = make(tmp_path, slow_query_threshold_ms=0, stacktrace_threshold_ms=0, stacktrace_source=source)
    queries.slow_query(t.engine, 0.0)
    (slow,) = [s for s in t.db_spans() if "dbperf_sleep" in str(s.attributes.get("db.statement"))]
    stack = slow.attributes[A.CODE_STACKTRACE]
    assert f'"{APP_CODE}", line {line_of("slow")}, in slow_query' in stack
    source_line = 'conn.execute(text("SELECT dbperf_sleep(:s)")'  # a literal written in the code
    assert (source_line in stack) is source
    if not source:
        assert all(line.startswith(("Traceback", '  File "')) for line in stack.splitlines())


def test_other_hooks_add_request_attributes_through_current_request(traced: Traced) -> None:
    """A hook on the request thread (pool waits, transactions) adds figures to the request's root span."""
    assert traced.processor.current_request() is None  # outside any request
    traced.memory.clear()
    with (
        traced.tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER),
        traced.tracer.start_as_current_span("inner"),
    ):
        request = traced.processor.current_request()
        assert request is not None
        request.add("dbperf.test.sum", 2)
        request.add("dbperf.test.sum", 3.5)
        request.set_max("dbperf.test.max", 4)
        request.set_max("dbperf.test.max", 1)
    (root,) = [s for s in traced.spans() if s.name == "GET /x"]
    assert root.attributes["dbperf.test.sum"] == 5.5
    assert root.attributes["dbperf.test.max"] == 4
    (inner,) = [s for s in traced.spans() if s.name == "inner"]
    assert "dbperf.test.sum" not in inner.attributes
