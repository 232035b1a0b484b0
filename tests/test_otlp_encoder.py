"""otel-dbperf's OTLP encoder (``_otlp.py``) against the SDK's: the same bytes, over fuzzed and real spans,
and its exporter sending them through the SDK exporter's own client to a real OTLP/HTTP receiver."""

from __future__ import annotations

import logging
import math
import random
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, BIN, base_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState
from otlp_receiver import Receiver
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool
from support.pipeline import Pipeline

from otel_dbperf import Settings, _guard, _runtime
from otel_dbperf import attributes as A
from otel_dbperf.exporters import _otlp
from otel_dbperf.exporters._otlp import FastOTLPSpanExporter, SpanEncoder, fast_exporter
from otel_dbperf.exporters._watch import WatchedSpanExporter


def stock_bytes(spans: Sequence[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializePartialToString()  # type: ignore[no-any-return]


def assert_same(spans: Sequence[ReadableSpan], encoder: SpanEncoder | None = None) -> bytes:
    """Our bytes equal the stock encoder's, byte for byte and once decoded (twice: the second time from
    the caches)."""
    encoder = encoder or SpanEncoder()
    expected = stock_bytes(spans)
    for _ in range(2):
        ours = encoder.encode(spans)
        assert ours == expected
        assert ExportTraceServiceRequest.FromString(ours) == ExportTraceServiceRequest.FromString(expected)
    return expected


# ---------------------------------------------------------------------------- fuzzed spans

KEYS = st.sampled_from(["db.system.name", "code.file.path", "k", "", "ключ", "a.b.c", "日本", "\x00"]) | st.text(
    max_size=12
)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, math.nan, -math.inf])
TEXT = st.text(max_size=40) | st.sampled_from(["", "x" * 300, "é" * 200, "\U0001f600", "\x00", "SELECT ?"])
SCALARS = st.one_of(st.booleans(), INT64, st.integers(), FLOATS, TEXT)
VALUES = st.one_of(
    SCALARS,
    st.lists(st.booleans(), max_size=4),
    st.lists(INT64, max_size=4),
    st.lists(st.integers(), max_size=3),  # huge ints in a sequence: the whole attribute is skipped
    st.lists(FLOATS, max_size=4),
    st.lists(TEXT, max_size=4).map(tuple),
    st.lists(st.none() | st.integers(0, 9), max_size=3),  # None in a sequence (the SDK allows it)
    st.binary(max_size=8),
    st.none(),
    st.dictionaries(st.text(max_size=4), st.integers(0, 9), max_size=2),  # a kvlist (raw mappings only)
    st.lists(st.lists(st.integers(0, 9), max_size=2), max_size=2),  # nested arrays (raw mappings only)
    st.just(frozenset({1})),  # a type the stock encoder refuses: skipped
)
ATTRIBUTES = st.dictionaries(KEYS, VALUES, max_size=6)


@st.composite
def bounded(draw: Any, attributes: dict[str, Any]) -> Any:
    """As the SDK keeps them (BoundedAttributes, maybe with drops), or a raw mapping."""
    how = draw(st.sampled_from(["bounded", "dropped", "raw", "none"]))
    if how == "none":
        return None
    if how == "raw":
        return attributes
    clean = {k: v for k, v in attributes.items() if not isinstance(v, (dict, frozenset, type(None)))}
    clean = {k: v for k, v in clean.items() if not (isinstance(v, list) and any(isinstance(x, list) for x in v))}
    out = BoundedAttributes(maxlen=2 if how == "dropped" else None, immutable=False)
    for k, v in clean.items():
        out[k] = v
    return out


CONTEXTS = st.builds(
    SpanContext,
    trace_id=st.integers(0, 2**128 - 1),
    span_id=st.integers(0, 2**64 - 1),
    is_remote=st.booleans(),
    trace_flags=st.sampled_from([TraceFlags(0), TraceFlags(1)]),
    trace_state=st.sampled_from([TraceState(), TraceState([("a", "1")]), TraceState([("vendor", "xy"), ("b", "2")])]),
)

RESOURCES = [
    Resource({"service.name": "one", "n": 1}),
    Resource({"n": 1, "service.name": "one"}),  # equal to the first, other order: grouped with it, its bytes
    Resource({"service.name": "two", "list": ("a", "b")}, schema_url="https://opentelemetry.io/schemas/1.21.0"),
    Resource({}),
]
SCOPES = [
    None,
    InstrumentationScope("opentelemetry.instrumentation.sqlalchemy", "0.66b1"),
    InstrumentationScope("opentelemetry.instrumentation.sqlalchemy", "0.66b1"),  # equal, another object
    InstrumentationScope("app", None, "https://schema", {"scope.attr": True, "n": [1, 2]}),
    InstrumentationScope("", ""),
]


@st.composite
def events(draw: Any) -> Any:
    out: Any = [
        Event(draw(TEXT), draw(bounded(draw(ATTRIBUTES))), timestamp=draw(st.none() | st.integers(0, 2**64 - 1)))
        for _ in range(draw(st.integers(0, 3)))
    ]
    if draw(st.booleans()):
        limited: Any = BoundedList(maxlen=1)
        for event in out:
            limited.append(event)
        return limited
    return out


@st.composite
def links(draw: Any) -> Any:
    return [Link(draw(CONTEXTS), draw(bounded(draw(ATTRIBUTES)))) for _ in range(draw(st.integers(0, 2)))]


@st.composite
def spans(draw: Any) -> ReadableSpan:
    code = draw(st.sampled_from(list(StatusCode)))
    status = draw(
        st.sampled_from(
            [
                None,
                Status(code),
                Status(StatusCode.ERROR, draw(TEXT)),
            ]
        )
    )
    start = draw(st.none() | st.integers(0, 2**64 - 1))
    return ReadableSpan(
        name=draw(TEXT),
        context=draw(CONTEXTS),
        parent=draw(st.none() | CONTEXTS),
        resource=draw(st.sampled_from(RESOURCES)),
        attributes=draw(bounded(draw(ATTRIBUTES))),
        events=draw(events()),
        links=draw(links()),
        kind=draw(st.sampled_from(list(SpanKind))),
        status=status if status is not None else Status(StatusCode.UNSET),
        start_time=start,
        end_time=draw(st.none() | st.integers(0, 2**64 - 1)),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
    )


@pytest.fixture(scope="module")
def quiet_stock_encoder() -> Iterator[None]:
    """The stock encoder logs each attribute it skips with a traceback; so do we, once per attribute."""
    names = ("opentelemetry.exporter.otlp.proto.common._internal", "otel_dbperf")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(spans(), max_size=8))
def test_fuzzed_batches_encode_to_the_stock_bytes(batch: list[ReadableSpan], quiet_stock_encoder: None) -> None:
    assert_same(batch)


@settings(max_examples=200, deadline=None)
@given(value=VALUES, key=KEYS)
def test_every_value_type_as_the_stock_encoder(value: Any, key: str, quiet_stock_encoder: None) -> None:
    span = ReadableSpan("v", SpanContext(1, 2, False), attributes={key: value, "after": 1})
    assert_same([span])


def test_seeded_corpus_with_one_encoder_across_batches(quiet_stock_encoder: None) -> None:
    """One encoder, its caches filled and emptied (limits made small), over many batches."""
    rng = random.Random(16)
    pool: list[Any] = [True, False, 0, -1, 2**63 - 1, -(2**63), 2**63, 1.5, math.inf, "", "a", "é" * 300, [1, 2], ()]
    keys = [f"key.{i}" for i in range(12)]
    encoder = SpanEncoder()
    saved = _otlp.MAX_CACHED_PAIRS
    _otlp.MAX_CACHED_PAIRS = 8
    try:
        for b in range(40):
            batch = []
            for i in range(rng.randint(0, 20)):
                attrs = {
                    rng.choice(keys): rng.choice(pool + [f"s{rng.randint(0, 30)}"]) for _ in range(rng.randint(0, 8))
                }
                parent = rng.choice([None, SpanContext(5, rng.getrandbits(64), rng.random() < 0.5)])
                batch.append(
                    ReadableSpan(
                        f"span {b}.{i}",
                        SpanContext(rng.getrandbits(128), rng.getrandbits(64), False),
                        parent=parent,
                        resource=rng.choice(RESOURCES),
                        attributes=BoundedAttributes(attributes={k: v for k, v in attrs.items() if v != 2**63}),
                        kind=rng.choice(list(SpanKind)),
                        start_time=rng.getrandbits(63),
                        end_time=rng.getrandbits(63),
                        instrumentation_scope=rng.choice(SCOPES),
                    )
                )
            assert_same(batch, encoder)
    finally:
        _otlp.MAX_CACHED_PAIRS = saved


def test_what_the_stock_encoder_skips_is_skipped(quiet_stock_encoder: None) -> None:
    """An int outside int64, a lone surrogate (value or key), a type it refuses: that attribute only."""
    attrs = {"big": 2**64, "small": -(2**63) - 1, "sur": "a\ud800", "\udfff": 1, "set": {1}, "ok": "yes"}
    span = ReadableSpan("s", SpanContext(1, 2, False), attributes=attrs)
    encoder = SpanEncoder()
    decoded = ExportTraceServiceRequest.FromString(assert_same([span], encoder))
    assert [kv.key for kv in decoded.resource_spans[0].scope_spans[0].spans[0].attributes] == ["ok"]
    assert encoder.skipped == 10  # five attributes, twice each (a skipped attribute is never cached)


def test_a_span_the_stock_encoder_refuses_raises() -> None:
    """A lone surrogate in a span name: both refuse the batch (ours raises; the exporter falls back)."""
    span = ReadableSpan("bad \ud800", SpanContext(1, 2, False))
    with pytest.raises(UnicodeEncodeError):
        stock_bytes([span])
    with pytest.raises(UnicodeEncodeError):
        SpanEncoder().encode([span])


# ---------------------------------------------------------------------------- real SDK spans


class Capture(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += spans
        return SpanExportResult.SUCCESS


def real_spans() -> list[ReadableSpan]:
    """Request and DB spans from the SDK, enriched by otel-dbperf: slow events, N+1, code location, an
    error status, a remote parent, links."""
    capture = Capture()
    settings = Settings(slow_query_threshold_ms=0, app_paths=(__file__.rsplit("/", 1)[0],))
    resource = Resource.create({"service.name": "encoder-test"})
    provider = Pipeline(settings, exporters=[capture], provider_options={"resource": resource}).provider
    engine = create_engine("sqlite://", poolclass=StaticPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE enc_authors (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO enc_authors VALUES (1, 'ann'), (2, 'bob')"))
    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(engine=engine, tracer_provider=provider, skip_dep_check=True)
    try:
        tracer = provider.get_tracer("test.framework", "1.2", schema_url="https://schema")
        remote = SpanContext(
            0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")])
        )
        with tracer.start_as_current_span(
            "GET /authors",
            kind=SpanKind.SERVER,
            context=set_span_in_context(NonRecordingSpan(remote)),
            links=[Link(remote, {"why": "test"})],
        ) as root:
            root.set_attribute("http.route", "/authors")
            with engine.connect() as conn:
                for i in range(6):  # an N+1
                    conn.execute(text("SELECT name FROM enc_authors WHERE id = :id"), {"id": i % 2 + 1}).scalar()
                with pytest.raises(OperationalError):
                    conn.execute(text("SELECT nope FROM enc_missing"))
        with tracer.start_as_current_span("job") as job:
            job.add_event("started", {"n": 3, "ratio": 0.5, "tags": ["a", "b"]})
            job.set_status(Status(StatusCode.ERROR, "failed"))
    finally:
        instrumentor.uninstrument()
    return capture.spans


def test_real_enriched_spans_encode_to_the_stock_bytes() -> None:
    batch = real_spans()
    decoded = ExportTraceServiceRequest.FromString(assert_same(batch))
    spans = [s for rs in decoded.resource_spans for ss in rs.scope_spans for s in ss.spans]
    db = [s for s in spans if s.kind == 3 and s.name == "SELECT"]  # (and the connect span)
    assert len(db) == 7
    keys = {kv.key for kv in db[-2].attributes}
    assert {A.QUERY_SLOW, A.QUERY_FINGERPRINT, A.CODE_FILE_PATH, A.N_PLUS_ONE} <= keys
    assert any(e.name == A.EVENT_SLOW_QUERY for s in db for e in s.events)
    # one batch of many copies (cache hits) is still the stock encoding
    assert_same(batch * 40)


# ---------------------------------------------------------------------------- the exporter


def trace_requests(receiver: Receiver) -> list[ExportTraceServiceRequest]:
    return [
        ExportTraceServiceRequest.FromString(b)
        for b, p in zip(receiver.raw, receiver.paths, strict=True)
        if p == "/v1/traces"
    ]


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_setup_sends_our_bytes_through_the_sdk_exporter(
    receiver: Receiver, compression: Compression, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``_runtime`` composes it: the SDK's exporter gets our encoder, whose bytes go out through the
    exporter's client (compressed by it: the receiver decompresses by the header) and are the stock
    encoder's bytes."""
    monkeypatch.setattr(_runtime.runtime, "processor", _runtime.runtime.processor)  # restored afterwards
    inner = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", compression=compression)
    factory = _runtime.sdk_kwargs(Settings())["export_span_processor"]
    batch_processor = factory(inner)
    enriching = batch_processor.span_exporter  # the chain _runtime built
    watched = enriching._exporter  # noqa: SLF001
    assert isinstance(watched, WatchedSpanExporter)
    fast = watched._exporter  # noqa: SLF001
    assert isinstance(fast, FastOTLPSpanExporter) and fast.wrapped is inner
    assert watched.watch.exporter is inner  # the watch still names the endpoint and stops its retries
    batch = real_spans()
    assert fast.export(batch) is SpanExportResult.SUCCESS
    assert fast.batches == 1 and fast.fallbacks == 0
    assert receiver.raw == [stock_bytes(batch)]
    batch_processor.shutdown()


def test_stock_setting_and_other_exporters_keep_the_stock_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runtime.runtime, "processor", _runtime.runtime.processor)  # restored afterwards
    otlp = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    assert fast_exporter(otlp, "stock") is otlp
    assert isinstance(fast_exporter(otlp, "fast"), FastOTLPSpanExporter)

    class Subclass(OTLPSpanExporter):  # may override export(): left alone
        pass

    sub = Subclass(endpoint="http://127.0.0.1:9/v1/traces")
    assert fast_exporter(sub, "fast") is sub
    other = Capture()
    assert fast_exporter(other, "fast") is other
    broken = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    del broken._client  # noqa: SLF001 - an SDK without the client we send through
    assert fast_exporter(broken, "fast") is broken
    factory = _runtime.sdk_kwargs(Settings(otlp_encoder="stock"))["export_span_processor"]
    processor = factory(otlp)
    assert processor.span_exporter._exporter._exporter is otlp  # noqa: SLF001
    processor.shutdown()


def test_an_encoder_error_sends_the_batch_down_the_stock_path(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
    fast = FastOTLPSpanExporter(inner)

    def boom(spans: Sequence[ReadableSpan]) -> bytes:
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(fast.encoder, "encode", boom)
    batch = real_spans()
    monkeypatch.setattr(_guard, "RERAISE", False)  # production: counted and logged, the batch goes out
    assert fast.export(batch) is SpanExportResult.SUCCESS
    assert fast.fallbacks == 1 and fast.batches == 0
    monkeypatch.setattr(_guard, "RERAISE", True)  # under pytest the error is re-raised, after the batch went out
    with pytest.raises(RuntimeError, match="encoder bug"):
        fast.export(batch)
    assert fast.fallbacks == 2
    expected = ExportTraceServiceRequest.FromString(stock_bytes(batch))
    assert trace_requests(receiver) == [expected, expected]


def test_size_limit_and_shutdown_as_the_sdk_exporter(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    inner = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", max_request_size=100)
    fast = FastOTLPSpanExporter(inner)
    batch = real_spans()
    with caplog.at_level(logging.WARNING):
        assert fast.export(batch) is SpanExportResult.FAILURE
    assert "exceeds max_request_size 100 bytes" in caplog.text
    fast.shutdown()
    assert fast.export(batch) is SpanExportResult.FAILURE  # refused by the SDK exporter itself
    assert trace_requests(receiver) == []


def test_a_backend_that_is_down_is_a_failed_export() -> None:
    """Connection refused: the SDK client's failure comes back as the export's result."""
    with socket.socket() as held:  # bound, never listening: refused, and no other process can take the port
        held.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{held.getsockname()[1]}/v1/traces"
        fast = FastOTLPSpanExporter(OTLPSpanExporter(endpoint=endpoint, timeout=0.5))
        assert fast.export(real_spans()) is SpanExportResult.FAILURE
    assert fast.batches == 1 and fast.fallbacks == 0


# ---------------------------------------------------------------------------- end to end


def run_script(receiver: Receiver, tmp_path: Path, **extra: str) -> tuple[str, list[dict[str, Any]]]:
    receiver.clear()
    proc = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "script_app.py", str(tmp_path / "s.db")],
        cwd=APPS,
        env=base_env(receiver, DBPERF_LOG_LEVEL="DEBUG", **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    spans = receiver.wait_for(lambda s: any(x["name"] == "GET /script" for x in s))
    return proc.stderr, spans


def comparable(spans: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What two runs of the same script share: no ids, no times (every ``*_ms`` figure: durations, pool
    waits, transaction lengths), no CPU or memory figures."""
    varying = {"dbperf.memory.rss_bytes", "dbperf.memory.rss_delta_bytes", "dbperf.request.cpu_ratio"}
    return sorted(
        (
            s["name"],
            s["kind"],
            s["scope"],
            sorted((k, repr(v)) for k, v in s["attributes"].items() if k not in varying and not k.endswith("_ms")),
        )
        for s in spans
    )


def test_opentelemetry_instrument_uses_our_encoder_by_default(receiver: Receiver, tmp_path: Path) -> None:
    """Under ``opentelemetry-instrument`` (OTLP/HTTP protobuf, otel-dbperf's default protocol) the SDK's
    exporter sends our bytes; with ``DBPERF_OTLP_ENCODER=stock`` its own; the receiver gets the same spans."""
    slow = "60000"  # no query is slow in either run, however loaded the machine: the slow flags compare too
    fast_err, fast_spans = run_script(receiver, tmp_path, DBPERF_SLOW_QUERY_THRESHOLD_MS=slow)
    assert "spans are encoded by otel-dbperf's OTLP encoder" in fast_err
    stock_err, stock_spans = run_script(
        receiver, tmp_path, DBPERF_OTLP_ENCODER="stock", DBPERF_SLOW_QUERY_THRESHOLD_MS=slow
    )
    assert "spans are encoded by otel-dbperf's OTLP encoder" not in stock_err
    assert len(fast_spans) >= 7 and comparable(fast_spans) == comparable(stock_spans)


class Renamed(ReadableSpan):
    """A span class whose properties are not the fields: read through the properties, as the stock encoder."""

    @property
    def attributes(self) -> Any:
        return {"from.property": True}

    @property
    def events(self) -> Sequence[Event]:
        return (Event("from.property", timestamp=5),)


def test_a_span_class_that_overrides_the_properties_is_read_through_them() -> None:
    span = Renamed("s", SpanContext(1, 2, False), attributes={"field": 1}, events=[Event("field", timestamp=1)])
    decoded = ExportTraceServiceRequest.FromString(assert_same([span]))
    (out,) = decoded.resource_spans[0].scope_spans[0].spans
    assert [kv.key for kv in out.attributes] == ["from.property"] and [e.name for e in out.events] == ["from.property"]


@pytest.mark.parametrize("dropped", [-1, 2**32])
def test_a_dropped_count_out_of_uint32_is_refused_by_both(dropped: int) -> None:
    class Odd(ReadableSpan):
        @property
        def dropped_attributes(self) -> int:
            return dropped

    span = Odd("s", SpanContext(1, 2, False))
    with pytest.raises(ValueError):
        stock_bytes([span])
    with pytest.raises(ValueError):
        SpanEncoder().encode([span])
