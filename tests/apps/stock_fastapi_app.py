"""A FastAPI app on sync SQLAlchemy, for the stock-install tests (PostgreSQL).

It imports nothing from the test suite: it runs in a venv that has only otel-dbperf[fastapi]
and the app's own dependencies.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from sqlalchemy import create_engine, text

engine = create_engine(os.environ["APP_DB_URL"])
app = FastAPI()


@app.get("/ping")
def ping() -> str:
    return "ok"


@app.get("/items")
def items() -> dict[str, int]:
    with engine.connect() as conn:
        return {"count": len(conn.execute(text("SELECT id FROM dbperf_stock_items")).all())}


@app.get("/slow")
def slow() -> str:
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(0.2)")).all()  # marker: stock_slow
    return "slow"
