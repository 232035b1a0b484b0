"""A Flask + SQLAlchemy (sync) app, launched unchanged under opentelemetry-instrument.

Lines marked ``# marker: NAME`` are looked up by the tests to check code.line.number.
"""

from __future__ import annotations

import logging
import os

from flask import Flask, jsonify
from models import Author, add_sqlite_sleep
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

engine = create_engine(os.environ["APP_DB_URL"])
if engine.dialect.name == "sqlite":
    add_sqlite_sleep(engine)

app = Flask(__name__)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return "ok"


@app.get("/author/<int:author_id>")
def author(author_id: int):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        found = session.get(Author, author_id)  # marker: point
        return jsonify(name=found.name if found else None)


@app.get("/authors")
def authors():  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        result = []
        for a in session.scalars(select(Author).order_by(Author.id)):
            result.append({"name": a.name, "books": len(a.books)})  # marker: n_plus_one
        return jsonify(result)


@app.get("/search")
def search():  # type: ignore[no-untyped-def]
    email = "alice.secret@example.com"
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id FROM dbperf_authors WHERE email = '{email}'")).all()  # marker: unsafe
    return jsonify(count=len(rows))


@app.get("/fingerprint")
def fingerprint():  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        conn.execute(text("SELECT name FROM dbperf_authors WHERE id = 3")).all()  # marker: fingerprint
    return "ok"


@app.get("/slow")
def slow():  # type: ignore[no-untyped-def]
    logging.getLogger("shop").warning("slow endpoint called")  # the app's own log line
    sql = "SELECT pg_sleep(0.3)" if engine.dialect.name == "postgresql" else "SELECT dbperf_sleep(0.3)"
    with engine.connect() as conn:
        conn.execute(text(sql)).all()  # marker: slow
    return "ok"


@app.get("/n/<int:k>")
def n_queries(k: int):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        for i in range(k):
            conn.execute(text("SELECT :i"), {"i": i}).all()
    return jsonify(k=k)


@app.get("/fail")
def fail():  # type: ignore[no-untyped-def]
    email = "@".join(["leak", "example.com"])  # a runtime value: the source line shows no literal
    with engine.connect() as conn:
        conn.execute(text(f"SELECT * FROM no_such_table WHERE email = '{email}'"))
    return "unreachable"


@app.get("/duplicate")
def duplicate():  # type: ignore[no-untyped-def]
    secret = "@".join(["dup-secret", "example.org"])  # a runtime value
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO dbperf_authors (id, name, email) VALUES (1, 'x', :email)"), {"email": secret})
    return "unreachable"
