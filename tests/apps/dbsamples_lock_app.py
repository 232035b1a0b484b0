"""Two requests that meet on one row lock (tests/test_dbsamples_lock.py), under opentelemetry-instrument.

/hold locks the row (SELECT ... FOR UPDATE) in a transaction and keeps it open until /release;
/wait updates the same row, so it waits on /hold's lock. The row's name holds a literal that must never
leave the process or the monitor.
"""

from __future__ import annotations

import os
import threading

from flask import Flask
from sqlalchemy import create_engine, text

engine = create_engine(os.environ["APP_DB_URL"], pool_size=4, max_overflow=0)
released = threading.Event()
SECRET = "s3cr3t-lock-value"

with engine.begin() as setup:
    setup.execute(text("CREATE TABLE IF NOT EXISTS dbsamples_stock (id int PRIMARY KEY, name text, n int)"))
    setup.execute(text(f"DELETE FROM dbsamples_stock WHERE name = '{SECRET}'"))
    if engine.dialect.name == "postgresql":
        setup.execute(text(f"INSERT INTO dbsamples_stock VALUES (7, '{SECRET}', 0) ON CONFLICT (id) DO NOTHING"))
    else:  # MariaDB (tests/test_dbkit_lock_e2e.py)
        setup.execute(text(f"INSERT IGNORE INTO dbsamples_stock VALUES (7, '{SECRET}', 0)"))

app = Flask(__name__)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return "ok"


@app.get("/hold")
def hold():  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text(f"SELECT n FROM dbsamples_stock WHERE id = 7 AND name = '{SECRET}' FOR UPDATE"))
        released.wait(60)  # the transaction stays open, holding the row lock
    return "held"


@app.get("/wait")
def wait():  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE dbsamples_stock SET n = n + 1 WHERE id = 7 AND name = '{SECRET}'"))
    return "updated"


@app.get("/release")
def release():  # type: ignore[no-untyped-def]
    released.set()
    return "released"
