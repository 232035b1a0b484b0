"""A Flask + SQLAlchemy app with a Redis cache and a Jinja2 template, launched unchanged under
opentelemetry-instrument. Lines marked ``# marker: NAME`` are looked up by the tests."""

from __future__ import annotations

import os

import redis
from beyondsql_models import Writer
from flask import Flask, jsonify, render_template
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

engine = create_engine(os.environ["APP_DB_URL"])
cache = redis.Redis(host="127.0.0.1", port=6379, db=int(os.environ.get("APP_REDIS_DB", "11")))
app = Flask(__name__)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return "ok"


@app.get("/mixed")
def mixed():  # type: ignore[no-untyped-def]
    """10 Redis GETs and 10 lazy loads: a SQL N+1 and a Redis repeat, each on its own."""
    cache.set("beyondsql:secret", "hunter2-cache-value")
    books = 0
    with Session(engine) as session:
        for writer in session.scalars(select(Writer).order_by(Writer.id)):
            cache.get(f"beyondsql:writer:{writer.id}")  # marker: redis_get
            books += len(writer.books)  # marker: lazy
    return jsonify(books=books)


@app.get("/template")
def template():  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        writers = session.scalars(select(Writer).order_by(Writer.id)).all()
        return render_template("beyondsql_writers.html", writers=writers)  # marker: render
