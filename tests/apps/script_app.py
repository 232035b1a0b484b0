"""A plain script: one request-like SERVER span with a few queries (SQLite).

Run under ``opentelemetry-instrument python script_app.py DB_PATH``, or with
``--configure`` to set OpenTelemetry up in code through ``otel_dbperf.configure()``.
"""

from __future__ import annotations

import json
import sys

if "--configure" in sys.argv:
    import otel_dbperf

    otel_dbperf.configure()

import sqlalchemy
from opentelemetry import trace
from sqlalchemy import create_engine, text

engine = create_engine(f"sqlite:///{sys.argv[1]}")
tracer = trace.get_tracer("script")

with tracer.start_as_current_span("GET /script", kind=trace.SpanKind.SERVER) as span:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, owner TEXT)"))
        for i in range(6):
            conn.execute(text(f"SELECT owner FROM items WHERE id = {i}")).all()  # marker: script_loop
    trace_id = format(span.get_span_context().trace_id, "032x")

print(json.dumps({"sqlalchemy": sqlalchemy.__version__, "trace_id": trace_id}))
trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]
