"""The processor's part in the pytest guard: a DB span right under a remote parent joins the request
that parent stands for when that request is open in this process (the guard's test root), while a
server span under the same remote parent stays a roll-up root of its own."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from support.pipeline import Pipeline

from otel_dbperf import attributes as A


def test_a_db_span_under_a_remote_stand_in_of_an_open_root_joins_that_roots_rollup() -> None:
    pipeline = Pipeline(n_plus_one_threshold=3)
    tracer = pipeline.tracer
    root = tracer.start_span("test_x", context=otel_context.Context(), kind=SpanKind.INTERNAL)
    ids = root.get_span_context()
    stand_in = NonRecordingSpan(SpanContext(ids.trace_id, ids.span_id, True, TraceFlags(TraceFlags.SAMPLED)))
    token = otel_context.attach(trace.set_span_in_context(stand_in))
    try:
        for i in range(3):  # the test's own queries: one roll-up, the test's
            pipeline.query(f"SELECT * FROM books WHERE author_id = {i}", system="sqlite")
        for i in range(3):  # three requests of one query each: no N+1 anywhere
            with pipeline.request("/authors/<id>", name="GET /authors/<id>"):
                pipeline.query(f"SELECT * FROM authors WHERE id = {i}", system="sqlite")
    finally:
        otel_context.detach(token)
        root.end()
    spans = pipeline.spans()
    test_root = next(s for s in spans if s.name == "test_x")
    assert test_root.attributes[A.DB_QUERY_COUNT] == 3
    assert test_root.attributes[A.N_PLUS_ONE_DETECTED] is True
    assert test_root.attributes[A.N_PLUS_ONE_REPEAT_COUNT] == 3
    requests = [s for s in spans if s.name == "GET /authors/<id>"]
    assert len(requests) == 3
    for span in requests:
        assert span.attributes[A.DB_QUERY_COUNT] == 1
        assert span.attributes[A.N_PLUS_ONE_DETECTED] is False


def test_a_db_span_under_a_remote_parent_of_another_process_belongs_to_no_request() -> None:
    pipeline = Pipeline()
    remote = NonRecordingSpan(SpanContext(0x1234, 0x5678, True, TraceFlags(TraceFlags.SAMPLED)))
    token = otel_context.attach(trace.set_span_in_context(remote))
    try:
        pipeline.query("SELECT 1", system="sqlite")
    finally:
        otel_context.detach(token)
    (db,) = pipeline.spans()
    assert db.attributes[A.QUERY_FINGERPRINT]
    assert A.N_PLUS_ONE_DETECTED not in db.attributes
