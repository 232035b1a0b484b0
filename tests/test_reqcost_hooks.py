"""The request-thread hooks hold the processor they write into (no walk of the provider's processors),
and the dbperf.db.errors counter is handed to the processor explicitly (no module global)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.pool import StaticPool
from support.pipeline import APP_CODE, instrument_sqlalchemy

from otel_dbperf import DbPerfSpanProcessor, Settings, _error_kind
from otel_dbperf import attributes as A
from otel_dbperf._sqla import duplicates as _duplicates
from otel_dbperf._sqla import transactions as _transactions


class Delegating(SpanProcessor):
    """A user's processor that delegates to otel-dbperf's: the provider's tuple holds only this one."""

    def __init__(self, inner: DbPerfSpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.inner.on_start(span, parent_context)

    def _on_ending(self, span: Any) -> None:
        self.inner._on_ending(span)  # noqa: SLF001


class Wrapped:
    """otel-dbperf's processor behind a delegating one, contrib's SQLAlchemy instrumentation on an engine."""

    def __init__(self, url: str = "sqlite://", **kw: Any) -> None:
        self.processor = DbPerfSpanProcessor(Settings(app_paths=(str(APP_CODE.parent),)))
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(Delegating(self.processor))
        self.provider.add_span_processor(SimpleSpanProcessor(self.processor.wrap_exporter(self.memory)))
        self.engine = sqlalchemy.create_engine(url, **kw)
        instrument_sqlalchemy(self.provider, self.engine)
        self.tracer = self.provider.get_tracer("test")

    def root(self, name: str) -> Any:
        return next(s for s in self.memory.get_finished_spans() if s.name == name)


@pytest.fixture
def wrapped() -> Iterator[Wrapped]:
    w = Wrapped(poolclass=StaticPool)
    yield w
    _duplicates.uninstall()
    _transactions.uninstall()
    w.provider.shutdown()


def test_the_duplicate_digest_reaches_a_processor_the_provider_holds_only_through_another(wrapped: Wrapped) -> None:
    _duplicates.install(wrapped.processor)
    with wrapped.tracer.start_as_current_span("GET /dup", kind=SpanKind.SERVER), wrapped.engine.connect() as conn:
        for _ in range(3):
            conn.execute(text("SELECT :x"), {"x": 1}).scalar()
    assert wrapped.root("GET /dup").attributes[A.DB_DUPLICATE_COUNT] == 2


def test_transactions_reach_a_processor_the_provider_holds_only_through_another(wrapped: Wrapped) -> None:
    _transactions.install(wrapped.processor.thresholds, records=wrapped.processor)
    with wrapped.tracer.start_as_current_span("GET /tx", kind=SpanKind.SERVER), wrapped.engine.begin() as conn:
        conn.execute(text("SELECT 1")).scalar()
    assert wrapped.root("GET /tx").attributes[A.DB_TRANSACTION_COUNT] == 1


def test_hooks_installed_without_a_processor_add_nothing(wrapped: Wrapped) -> None:
    _transactions.install(wrapped.processor.thresholds)
    with wrapped.tracer.start_as_current_span("GET /none", kind=SpanKind.SERVER), wrapped.engine.begin() as conn:
        conn.execute(text("SELECT 1")).scalar()
    assert A.DB_TRANSACTION_COUNT not in wrapped.root("GET /none").attributes


def test_the_error_counter_is_the_processors_not_a_module_global(pg_sync_url: str) -> None:
    assert not hasattr(_error_kind, "listener")
    w = Wrapped(pg_sync_url)
    counted: list[str] = []
    w.processor.attach_error_counter(counted.append)
    try:
        with w.tracer.start_as_current_span("GET /slow", kind=SpanKind.SERVER), w.engine.connect() as conn:
            conn.execute(text("SET statement_timeout = 1"))
            with pytest.raises(sqlalchemy.exc.OperationalError):
                conn.execute(text("SELECT pg_sleep(1)"))
        assert counted == [_error_kind.STATEMENT_TIMEOUT]
        assert w.root("GET /slow").attributes["dbperf.db.statement_timeouts"] == 1
    finally:
        w.engine.dispose()
        w.provider.shutdown()
