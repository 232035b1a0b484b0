"""A Flask + SQLAlchemy app with the problems otel-dbperf suggests fixes for, served by uvicorn
(WSGI interface) under opentelemetry-instrument.

``/authors`` and ``/books`` lazily load a relationship per row (N+1); ``/dupes`` runs one SELECT
three times with the same parameters (a canary) and with other parameters (near duplicates).
"""

from __future__ import annotations

import os

from flask import Flask, jsonify
from models import Author, Book
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

CANARY = "CANARY_e2e_dup_" + "91c2d7_YRANAC"  # built at run time: the source line holds no whole canary
NUMBER = 5_180_273_349 + 1

engine = create_engine(os.environ["APP_DB_URL"])
app = Flask(__name__)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return "ok"


@app.get("/authors")
def authors():  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        rows = session.scalars(select(Author).order_by(Author.id)).all()
        return jsonify([len(a.books) for a in rows])  # marker: lazy_books


@app.get("/books")
def books():  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        rows = session.scalars(select(Book).order_by(Book.id)).all()
        return jsonify(sorted({b.author.name for b in rows}))  # marker: lazy_author


@app.get("/dupes")
def dupes():  # type: ignore[no-untyped-def]
    sql = text("SELECT id FROM dbperf_authors WHERE email = :email AND id < :n")
    with engine.connect() as conn:
        for _ in range(3):
            conn.execute(sql, {"email": CANARY, "n": NUMBER}).all()  # marker: duplicate
        for i in range(3):
            conn.execute(sql, {"email": CANARY + str(i), "n": NUMBER + i}).all()
    return "ok"
