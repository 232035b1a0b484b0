"""Raw DB-API clients (no SQLAlchemy): sqlite3, psycopg, psycopg2, in one request-like span.

Usage: dbapi_app.py DRIVER TARGET   (TARGET: a SQLite file, or a PostgreSQL DSN)
"""

from __future__ import annotations

import json
import sys

from opentelemetry import trace

driver, target = sys.argv[1], sys.argv[2]
if driver == "sqlite3":
    import sqlite3

    conn = sqlite3.connect(target)
elif driver == "psycopg":
    import psycopg

    conn = psycopg.connect(target)  # type: ignore[assignment]
else:
    import psycopg2

    conn = psycopg2.connect(target)  # type: ignore[assignment]

tracer = trace.get_tracer("dbapi-app")
with tracer.start_as_current_span("GET /dbapi", kind=trace.SpanKind.SERVER) as span:
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS dbapi_items (id INTEGER PRIMARY KEY, owner TEXT)")
    for i in range(6):
        cur.execute(f"SELECT owner FROM dbapi_items WHERE owner = 'owner{i}@example.com'")  # marker: dbapi_loop
        cur.fetchall()
    conn.commit()
    trace_id = format(span.get_span_context().trace_id, "032x")
conn.close()
print(json.dumps({"trace_id": trace_id}))
trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]
