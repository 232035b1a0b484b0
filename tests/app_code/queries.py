"""Application code for the in-process tests. Lines marked ``# line: NAME`` are asserted."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text


def point_query(engine: Engine, author_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT name FROM authors WHERE id = :id"), {"id": author_id}).scalar()  # line: point


def deep_query(engine: Engine, depth: int) -> Any:
    if depth > 0:
        return deep_query(engine, depth - 1)
    return point_query(engine, 1)  # line: deep


def slow_query(engine: Engine, seconds: float) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT dbperf_sleep(:s)"), {"s": seconds}).scalar()  # line: slow


def n_plus_one(engine: Engine, n: int) -> list[Any]:
    out = []
    with engine.connect() as conn:
        for i in range(n):
            out.append(conn.execute(text(f"SELECT name FROM authors WHERE id = {i}")).scalar())  # line: loop
    return out
