"""A Flask-SQLAlchemy app as users write them, for the stock-install tests (PostgreSQL).

It imports nothing from the test suite: it runs in a venv that has only otel-dbperf[flask]
and the app's own dependencies.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, select, text
from sqlalchemy.orm import Mapped, mapped_column

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["APP_DB_URL"]
db = SQLAlchemy(app)


class Item(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "dbperf_stock_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


@app.get("/ping")
def ping() -> str:
    return "ok"


@app.get("/items")
def items() -> dict[str, int]:
    return {"count": len(db.session.scalars(select(Item)).all())}


@app.get("/slow")
def slow() -> str:
    db.session.execute(text("SELECT pg_sleep(0.2)")).all()  # marker: stock_slow
    return "slow"


@app.get("/boom")
def boom() -> str:
    raise RuntimeError("stock-app-boom")
