"""Fix suggestions in-process: the relationship behind an N+1 of lazy loads, and exact duplicates."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from models import Author, Book, seed
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogExporter, SimpleLogRecordProcessor
from opentelemetry.trace import SpanKind
from sqlalchemy import select, text
from sqlalchemy.orm import Session, selectinload
from support.pipeline import Traced

from otel_dbperf import Settings
from otel_dbperf import attributes as A
from otel_dbperf._pipeline.derive import SpanDeriver
from otel_dbperf._pipeline.slowlog import SlowQueryLog
from otel_dbperf._sqla import duplicates as _duplicates
from otel_dbperf.profiler import HistorySink, QueryHistory
from otel_dbperf.report.html import render_html
from otel_dbperf.report.summary import ReadStats, Report, read_spans, render_text

HERE = str(Path(__file__).parent)
CANARY = "CANARY_dup_4f1e9a_param_YRANAC"
NUMBER = 7_349_117_203


class Harness(Traced):
    """Traced, plus the model tables, the duplicate listener and every sink (slow log, profiler)."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("app_paths", (HERE,))
        super().__init__(Settings(**settings))
        seed(self.engine)
        self.logs = InMemoryLogExporter()
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        self.history = QueryHistory(1000)
        self.slowlog = SlowQueryLog(self.processor.settings, logger_provider)
        self.deriver = SpanDeriver(self.processor.thresholds, [self.slowlog, HistorySink(self.history)])
        self.processor.attach_deriver(self.deriver.submit)

    def request(self, route: str, work: Any) -> Any:
        with self.tracer.start_as_current_span(f"GET {route}", kind=SpanKind.SERVER) as span:
            span.set_attribute("http.route", route)
            return work()

    def root(self, route: str) -> dict[str, Any]:
        (root,) = [s for s in self.spans() if s.kind is SpanKind.SERVER and s.attributes["http.route"] == route]
        return dict(root.attributes or {})

    def report(self) -> dict[str, Any]:
        line = json.dumps(_otlp_json(self.spans()))
        stats = ReadStats()
        report = Report()
        for span in read_spans(iter([line]), stats):
            report.add(span)
        return report.as_dict(stats)


def _otlp_json(spans: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(encode_spans(spans))


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness(slow_query_threshold_ms=0.0)  # every query is slow: each reaches the slow-query log
    _duplicates.install(h.processor)
    yield h
    h.provider.shutdown()
    _duplicates.uninstall()


def _authors_and_books(engine: Any) -> int:
    with Session(engine) as session:
        return sum(len(a.books) for a in session.scalars(select(Author)))  # 1 + 8 queries


def _books_and_authors(engine: Any) -> int:
    with Session(engine) as session:
        return len({b.author.name for b in session.scalars(select(Book))})  # 1 + 8 (one per author)


def test_n_plus_one_of_a_collection_names_the_relationship_and_selectinload(harness: Harness) -> None:
    assert harness.request("/authors", lambda: _authors_and_books(harness.engine)) == 16
    root = harness.root("/authors")
    assert root[A.N_PLUS_ONE_DETECTED] is True and root[A.N_PLUS_ONE_REPEAT_COUNT] == 8
    assert root[A.N_PLUS_ONE_RELATIONSHIP] == "Author.books"
    assert root[A.N_PLUS_ONE_SUGGESTION] == "selectinload(Author.books)"


def test_n_plus_one_of_a_many_to_one_suggests_joinedload(harness: Harness) -> None:
    assert harness.request("/books", lambda: _books_and_authors(harness.engine)) == 8
    root = harness.root("/books")
    assert root[A.N_PLUS_ONE_REPEAT_COUNT] == 8
    assert root[A.N_PLUS_ONE_RELATIONSHIP] == "Book.author"
    assert root[A.N_PLUS_ONE_SUGGESTION] == "joinedload(Book.author)"


def test_the_fix_removes_the_n_plus_one_and_a_hand_written_loop_gets_no_suggestion(harness: Harness) -> None:
    def fixed() -> int:
        with Session(harness.engine) as session:
            authors = session.scalars(select(Author).options(selectinload(Author.books)))
            return sum(len(a.books) for a in authors)

    def loop() -> None:
        with harness.engine.connect() as conn:
            for i in range(1, 9):
                conn.execute(select(Book.title).where(Book.author_id == i)).all()

    assert harness.request("/fixed", fixed) == 16
    harness.request("/loop", loop)
    assert harness.root("/fixed")[A.N_PLUS_ONE_DETECTED] is False
    loop_root = harness.root("/loop")
    assert loop_root[A.N_PLUS_ONE_DETECTED] is True  # an N+1, but no lazy load: nothing to name
    assert A.N_PLUS_ONE_RELATIONSHIP not in loop_root and A.N_PLUS_ONE_SUGGESTION not in loop_root


def test_the_suggestion_reaches_the_slow_query_log_the_profiler_and_the_report(harness: Harness) -> None:
    harness.request("/authors", lambda: _authors_and_books(harness.engine))
    harness.provider.force_flush()
    harness.deriver.drain()
    lazy = [e for e in harness.history.entries() if e.relationship]
    assert len(lazy) == 8 and {(e.relationship, e.suggestion) for e in lazy} == {
        ("Author.books", "selectinload(Author.books)")
    }
    assert lazy[0].summary()["suggestion"] == "selectinload(Author.books)"  # in the API's lists too
    records = [r.log_record for r in harness.logs.get_finished_logs()]
    lazy_records = [r for r in records if A.N_PLUS_ONE_RELATIONSHIP in (r.attributes or {})]
    assert lazy_records, [dict(r.attributes or {}) for r in records]
    for r in lazy_records:
        assert r.attributes[A.N_PLUS_ONE_SUGGESTION] == "selectinload(Author.books)"
        assert r.attributes[A.N_PLUS_ONE_REPEAT_COUNT] == 8
    first_query = [r for r in records if "dbperf_authors" in str((r.attributes or {}).get(A.DB_QUERY_TEXT))]
    assert first_query and A.N_PLUS_ONE_RELATIONSHIP not in first_query[0].attributes
    data = harness.report()
    (finding,) = data["n_plus_one"]
    assert finding["relationship"] == "Author.books" and finding["suggestion"] == "selectinload(Author.books)"
    assert "lazy load of Author.books: load it with selectinload(Author.books)" in render_text(data)
    assert "<code>selectinload(Author.books)</code>" in render_html(data)


def _duplicates_and_near_duplicates(engine: Any) -> None:
    sql = text("SELECT id FROM dbperf_authors WHERE email = :email AND id < :n")
    with engine.connect() as conn:
        for _ in range(3):  # the same statement, the same parameters: 2 exact repeats
            conn.execute(sql, {"email": CANARY, "n": NUMBER}).all()
        for i in range(4):  # the same statement, other parameters each time: near duplicates only
            conn.execute(sql, {"email": f"{CANARY}{i}", "n": NUMBER + i}).all()
        conn.execute(text("SELECT 1 FROM dbperf_books WHERE id = 3")).all()  # no parameters: the text decides
        conn.execute(text("SELECT 1 FROM dbperf_books WHERE id = 3")).all()
        conn.execute(text("SELECT 1 FROM dbperf_books WHERE id = 4")).all()  # same fingerprint, other literal
        conn.execute(text("UPDATE dbperf_books SET title = :t WHERE id = 1"), {"t": CANARY})  # writes: never
        conn.execute(text("UPDATE dbperf_books SET title = :t WHERE id = 1"), {"t": CANARY})
        conn.commit()


def test_exact_duplicates_are_told_from_near_duplicates(harness: Harness) -> None:
    harness.request("/dupes", lambda: _duplicates_and_near_duplicates(harness.engine))
    root = harness.root("/dupes")
    assert root[A.DB_QUERY_COUNT] == 12
    assert root[A.DB_DUPLICATE_COUNT] == 3  # 2 with the same parameters, 1 with the same literal
    db = [s for s in harness.db_spans() if s.attributes.get(A.QUERY_DUPLICATE)]
    assert len(db) == 3
    assert root[A.DB_DUPLICATE_DURATION_MS] == pytest.approx(sum((s.end_time - s.start_time) / 1e6 for s in db))
    assert {s.attributes[A.DB_QUERY_SUMMARY] for s in db} == {"SELECT dbperf_authors", "SELECT dbperf_books"}
    data = harness.report()
    by_summary = {d["summary"]: d for d in data["duplicates"]}
    assert by_summary["SELECT dbperf_authors"]["duplicates"] == 2 and by_summary["SELECT dbperf_authors"]["count"] == 7
    assert by_summary["SELECT dbperf_books"]["duplicates"] == 1 and by_summary["SELECT dbperf_books"]["count"] == 3
    assert by_summary["SELECT dbperf_authors"]["saved_ms"] > 0 and by_summary["SELECT dbperf_authors"]["routes"] == [
        "/dupes"
    ]
    assert "cache candidates" in render_text(data) and "cache candidates" in render_html(data)


def test_no_request_no_duplicate_judgement_and_a_second_request_starts_afresh(harness: Harness) -> None:
    _duplicates_and_near_duplicates(harness.engine)  # outside any request: nothing to count into
    harness.request("/dupes", lambda: _duplicates_and_near_duplicates(harness.engine))
    assert harness.root("/dupes")[A.DB_DUPLICATE_COUNT] == 3  # not 5: the earlier queries were no request's
    assert not any(s.attributes.get(A.QUERY_DUPLICATE) for s in harness.db_spans() if not s.parent)


def test_parameters_never_appear_in_any_output(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    harness.request("/dupes", lambda: _duplicates_and_near_duplicates(harness.engine))
    harness.request("/authors", lambda: _authors_and_books(harness.engine))
    harness.provider.force_flush()
    harness.deriver.drain()
    assert harness.root("/dupes")[A.DB_DUPLICATE_COUNT] == 3  # the parameters were compared
    data = harness.report()
    logs = harness.logs.get_finished_logs()
    outputs = {
        "spans": json.dumps(_otlp_json(harness.spans())),
        "logs": repr([(r.log_record.body, dict(r.log_record.attributes or {})) for r in logs]),
        "profiler": repr([e for e in harness.history.entries()]),
        "report": json.dumps(data) + render_text(data) + render_html(data),
        "python logging": caplog.text,
    }
    assert len(logs) > 0 and len(harness.history.entries()) > 12
    for name, out in outputs.items():
        assert "CANARY" not in out and "YRANAC" not in out, name
        assert str(NUMBER) not in out and str(NUMBER + 1) not in out, name
    # and the digests themselves are never exported either: no 32-hex value in a DB span's attributes
    for span in harness.db_spans():
        assert not any(isinstance(v, bytes) for v in (span.attributes or {}).values())


def test_digest_is_keyed_per_process_and_equal_for_equal_parameters() -> None:
    from otel_dbperf._sqla.params import NONE, digest

    assert digest({"a": 1, "b": "x"}) == digest({"a": 1, "b": "x"})
    assert digest({"a": 1, "b": "x"}) != digest({"a": 2, "b": "x"})
    assert digest((1,)) != digest(("1",)) and digest((-1,)) != digest((-2,))  # not hash(): -1 and -2 hash alike
    import hashlib

    unkeyed = hashlib.blake2b(repr((1,)).encode(), digest_size=16).digest()
    assert digest((1,)) != unkeyed
    assert digest(()) == NONE == b"" and digest(tuple(range(100))) is None


def test_the_lazy_loader_is_found_in_this_sqlalchemy() -> None:
    """Pins the code object the frame walk looks for (``_LazyLoader`` in 2.1, ``LazyLoader`` in 2.0)."""
    import sys

    import sqlalchemy.orm.strategies

    from otel_dbperf._pipeline.location import _lazy_loader_code

    code = _lazy_loader_code(sys.modules["sqlalchemy.orm.strategies"])
    assert code is not None and code.co_name == "_load_for_state"
    assert code.co_filename == sqlalchemy.orm.strategies.__file__
