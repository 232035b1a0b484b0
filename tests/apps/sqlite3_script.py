"""A plain script on sqlite3's connection shortcuts: one request-like SERVER span.

Run under ``opentelemetry-instrument python sqlite3_script.py DB_PATH``, or with ``--configure``
to set OpenTelemetry up in code: ``otel_dbperf.configure()`` and contrib's ``SQLite3Instrumentor``.
"""

from __future__ import annotations

import json
import sqlite3
import sys

if "--configure" in sys.argv:
    from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

    import otel_dbperf

    otel_dbperf.configure()
    SQLite3Instrumentor().instrument()

from opentelemetry import trace

conn = sqlite3.connect(sys.argv[1])
tracer = trace.get_tracer("script")
with tracer.start_as_current_span("GET /shortcuts", kind=trace.SpanKind.SERVER) as span:
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, owner TEXT);")  # marker: script
    conn.executemany("INSERT INTO items (owner) VALUES (?)", [(f"owner{i}",) for i in range(6)])  # marker: many
    owners = []
    for i in range(1, 7):
        owners.append(conn.execute(f"SELECT owner FROM items WHERE id = {i}").fetchone()[0])  # marker: loop
    trace_id = format(span.get_span_context().trace_id, "032x")
conn.close()
print(json.dumps({"owners": owners, "trace_id": trace_id}))
trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]
