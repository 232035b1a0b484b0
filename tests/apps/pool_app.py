"""A Flask app with a small SQLAlchemy pool, served by threads (uvicorn's WSGI) under opentelemetry-instrument.

``main`` (pool_size=2, max_overflow=0): /hold keeps a connection ~300 ms, so 8 concurrent
requests queue for it for over a second (long enough for a loaded machine's metric samples);
/idle_tx sleeps inside a transaction; /statement_timeout is canceled by PostgreSQL. ``tiny``
(pool_size=1, max_overflow=0, pool_timeout=0.1): /exhaust holds its only connection and asks
for another, which times out.
"""

from __future__ import annotations

import os
import time

from flask import Flask, jsonify
from sqlalchemy import create_engine, exc, text

URL = os.environ["APP_DB_URL"]
engine = create_engine(URL, pool_size=2, max_overflow=0, pool_timeout=30, pool_logging_name="main")
tiny = create_engine(URL, pool_size=1, max_overflow=0, pool_timeout=0.1, pool_logging_name="tiny")

app = Flask(__name__)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return "ok"


@app.get("/hold")
def hold():  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(0.3)"))
    return "held"


@app.get("/idle_tx")
def idle_tx():  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text("SELECT 1"))
        time.sleep(0.3)  # the app works while the transaction stays open
        conn.execute(text("SELECT 1"))
    return "done"


@app.get("/statement_timeout")
def statement_timeout():  # type: ignore[no-untyped-def]
    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL statement_timeout = 50"))
            conn.execute(text("SELECT pg_sleep(1)"))
    except exc.OperationalError:
        return jsonify(error="statement timeout"), 504
    return "not canceled", 500


@app.get("/exhaust")
def exhaust():  # type: ignore[no-untyped-def]
    with tiny.connect():
        try:
            with tiny.connect():
                return "a second connection", 500
        except exc.TimeoutError:
            return jsonify(error="pool timeout"), 503
