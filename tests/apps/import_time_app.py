"""A module that queries PostgreSQL through SQLAlchemy + psycopg2 when it is imported (no request
around the queries), then ends; run under ``opentelemetry-instrument python import_time_app.py URL``."""

from __future__ import annotations

import sys

from opentelemetry import trace
from sqlalchemy import create_engine, text

engine = create_engine(sys.argv[1])
with engine.connect() as conn:
    conn.execute(text("SELECT 41 + 1")).all()  # marker: import_query
trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]
