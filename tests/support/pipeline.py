"""The one in-process pipeline harness: what the configurator builds, for a test to drive.

``Pipeline`` is a TracerProvider with otel-dbperf's span processor first and, after it, the
processor's enriching wrapper around each exporter (an in-memory one always; simple or batched);
optionally the derivation thread's sinks and the metrics (a MeterProvider with otel-dbperf's views
and an in-memory reader). ``Traced`` adds an in-memory SQLite engine traced by contrib's SQLAlchemy
instrumentation, with the ``authors`` table that ``tests/app_code/queries.py`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app_code import queries
from conftest import data_points
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind

from otel_dbperf import DbPerfSpanProcessor, Settings
from otel_dbperf import attributes as A
from otel_dbperf._pipeline.derive import SpanDeriver, build_deriver

APP_CODE = Path(queries.__file__)  # the "application code" of the in-process tests


def line_of(name: str, path: Path = APP_CODE) -> int:
    """The line of ``path`` marked ``# line: NAME``."""
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# line: {name}"):
            return i
    raise LookupError(name)


class Pipeline:
    """otel-dbperf's pipeline in this process.

    ``settings`` (or keyword settings; ``app_paths`` defaults to ``tests/app_code``). ``exporters``:
    more exporters behind the processor's wrapper, beside ``memory``; ``raw_exporters``: exporters fed
    the spans as the SDK ends them, unenriched (what the processor is up against). ``batch``: batch
    processors (with these options; ``True`` for the SDK's defaults) instead of simple ones.
    ``metrics``: a MeterProvider with these views (``True``: otel-dbperf's) and the deriver feeding
    it; ``sinks``: the derivation thread's other sinks (a deriver without metrics when alone).
    ``provider_options`` go to the TracerProvider (``resource``, ``span_limits``).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        exporters: Sequence[SpanExporter] = (),
        raw_exporters: Sequence[SpanExporter] = (),
        batch: bool | dict[str, Any] = False,
        metrics: bool | Sequence[Any] = False,
        sinks: Sequence[Any] = (),
        provider_options: dict[str, Any] | None = None,
        **settings_kw: Any,
    ) -> None:
        if settings is None:
            settings_kw.setdefault("app_paths", (str(APP_CODE.parent),))
            settings = Settings(**settings_kw)
        self.settings = settings
        self.processor = DbPerfSpanProcessor(settings)
        self.provider = TracerProvider(**(provider_options or {}))
        self.provider.add_span_processor(self.processor)
        for raw in raw_exporters:
            self.provider.add_span_processor(SimpleSpanProcessor(raw))
        self.memory = InMemorySpanExporter()
        for exporter in (self.memory, *exporters):
            wrapped = self.processor.wrap_exporter(exporter)
            if batch:
                options = batch if isinstance(batch, dict) else {}
                self.provider.add_span_processor(BatchSpanProcessor(wrapped, **options))
            else:
                self.provider.add_span_processor(SimpleSpanProcessor(wrapped))
        self.tracer = self.provider.get_tracer("test")
        self.meters: Any = None
        self.reader: Any = None
        self.deriver: SpanDeriver | None = None
        self.data: Any = None
        if metrics is not False:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            from otel_dbperf.metrics import DEFAULT_VIEWS

            views = DEFAULT_VIEWS if metrics is True else metrics
            self.reader = InMemoryMetricReader()
            self.meters = MeterProvider(metric_readers=[self.reader], views=views)
        if metrics is not False or sinks:
            self.deriver = build_deriver(self.processor.thresholds, self.meters, sinks)
            self.processor.attach_deriver(self.deriver.submit)

    # ------------------------------------------------------------------ driving it

    @contextmanager
    def request(self, route: str, name: str | None = None) -> Iterator[Span]:
        """A server span for ``route`` (``GET route`` unless ``name``), current inside the block."""
        with self.tracer.start_as_current_span(name or f"GET {route}", kind=SpanKind.SERVER) as span:
            span.set_attribute("http.route", route)
            yield span

    def query(self, statement: str, system: str = "postgresql", sleep_s: float = 0.0, **attributes: Any) -> None:
        """A DB client span, as a driver instrumentation makes one (inside the current span, if any)."""
        with self.tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as db:
            db.set_attribute("db.system.name", system)
            db.set_attribute("db.query.text", statement)
            for key, value in attributes.items():
                db.set_attribute(key, value)
            if sleep_s:
                time.sleep(sleep_s)

    # ------------------------------------------------------------------ reading it

    def spans(self) -> list[ReadableSpan]:
        """Every span exported so far (batches flushed first)."""
        self.provider.force_flush()
        return list(self.memory.get_finished_spans())

    def db_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.attributes and A.QUERY_FINGERPRINT in s.attributes]

    def roots(self) -> dict[str, ReadableSpan]:
        """The server spans, by name."""
        return {s.name: s for s in self.spans() if s.kind is SpanKind.SERVER}

    def points(self, name: str, fresh: bool = True) -> list[Any]:
        """The data points of metric ``name``. ``fresh``: collect now (which drains the derivation
        queue first); else reuse the last collection (exemplars are those sampled since the previous
        collection)."""
        if fresh or self.data is None:
            self.data = self.reader.get_metrics_data()
        return data_points(self.data, name)

    def close(self) -> None:
        self.provider.shutdown()
        if self.meters is not None:
            self.meters.shutdown()


def instrument_sqlalchemy(provider: TracerProvider, engine: Any = None, meter_provider: Any = None) -> None:
    """Contrib's SQLAlchemy instrumentation, on ``engine`` (or on every engine made from now on),
    into ``provider`` (undone first if an earlier test left it on)."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    options: dict[str, Any] = {"tracer_provider": provider, "skip_dep_check": True}
    if engine is not None:
        options["engine"] = engine
    if meter_provider is not None:
        options["meter_provider"] = meter_provider
    instrumentor.instrument(**options)


def uninstrument_sqlalchemy() -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().uninstrument()


class Traced(Pipeline):
    """A Pipeline with an SQLite engine (in memory, or ``url``) traced by contrib's SQLAlchemy
    instrumentation, holding the ``authors`` table; ``dbperf_sleep(s)`` sleeps in SQL."""

    def __init__(self, settings: Settings | None = None, url: str | None = None, **options: Any) -> None:
        from sqlalchemy import create_engine, event, text
        from sqlalchemy.pool import StaticPool

        super().__init__(settings, **options)
        self.engine = create_engine(url) if url else create_engine("sqlite://", poolclass=StaticPool)

        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.create_function("dbperf_sleep", 1, lambda s: time.sleep(s) or 0)

        with self.engine.begin() as conn:
            conn.execute(text("CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT)"))
            conn.execute(text("INSERT INTO authors VALUES (1, 'ann'), (2, 'bob')"))
        instrument_sqlalchemy(self.provider, self.engine)


def make(tmp_path: Path | None = None, **settings: Any) -> Traced:
    """A ``Traced`` with these settings (``app_paths``: tests/app_code unless given)."""
    settings.setdefault("app_paths", (str(APP_CODE.parent),))
    return Traced(Settings(**settings))
