"""A Flask app whose views fail with database errors carrying a canary (``APP_CANARY``).

Run as ``python logs_app.py`` (Flask's development server on ``PORT``) or under gunicorn
(``logs_app:app``), with or without ``opentelemetry-instrument``.
"""

from __future__ import annotations

import logging
import os

from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

CANARY = os.environ["APP_CANARY"]
TABLE = os.environ.get("APP_TABLE", "dbperf_logs_users")
engine = create_engine(os.environ["APP_DB_URL"])
log = logging.getLogger("shop")

app = Flask(__name__)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return "ok"


@app.get("/signup")
def signup():  # type: ignore[no-untyped-def]
    with engine.begin() as conn:  # IntegrityError: Key (email)=(CANARY) already exists
        conn.execute(text(f"INSERT INTO {TABLE} (email) VALUES (:email)"), {"email": CANARY})
    return "unreachable"


@app.get("/age")
def age():  # type: ignore[no-untyped-def]
    with engine.connect() as conn:  # DataError: invalid input syntax for type integer: "CANARY"
        conn.execute(text(f"SELECT id FROM {TABLE} WHERE id = CAST(:age AS integer)"), {"age": CANARY}).all()
    return "unreachable"


@app.get("/logged")
def logged():  # type: ignore[no-untyped-def]
    try:
        with engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {TABLE} (email) VALUES (:email)"), {"email": CANARY})
    except IntegrityError as exc:
        log.exception("signup failed")  # the app's own record, with the exception
        log.error("the database said: %s", exc)  # the exception text in the body
        return "conflict", 409
    return "unreachable"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]))
