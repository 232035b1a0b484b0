"""A project's plain suite (Flask, SQLAlchemy, an N+1): otel-dbperf installed must change nothing."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import create_engine, text

engine = create_engine("sqlite://")
app = Flask(__name__)


@app.get("/items")
def items():  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return {"rows": [conn.execute(text("SELECT :i"), {"i": i}).scalar() for i in range(8)]}


def test_an_n_plus_one_passes_when_not_asked() -> None:
    assert app.test_client().get("/items").json == {"rows": list(range(8))}
