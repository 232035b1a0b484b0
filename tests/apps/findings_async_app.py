"""A FastAPI + async SQLAlchemy (asyncpg) app (seed 004) with the asyncio findings.

``/block``: a blocking call in a coroutine stalls the event loop; ``/awaits``: as long, awaited;
``/dashboard``: three independent SELECTs awaited one after another; ``/chain``: three SELECTs
where each takes a value from the one before. Lines marked ``# marker: NAME`` are looked up by the tests.
"""

from __future__ import annotations

import asyncio
import os
import time

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

engine = create_async_engine(os.environ["APP_DB_URL"], pool_size=2, max_overflow=0)
app = FastAPI()


@app.get("/ping")
async def ping() -> str:
    return "ok"


@app.get("/block")
async def block() -> str:
    time.sleep(0.5)  # marker: loop_block
    return "blocked"


@app.get("/awaits")
async def awaits() -> str:
    await asyncio.sleep(0.5)
    return "awaited"


@app.get("/dashboard")
async def dashboard() -> dict[str, int]:
    async with AsyncSession(engine) as session:
        authors = (await session.execute(text("SELECT count(*) FROM dbperf_authors"))).scalar_one()  # marker: seq
        books = (await session.execute(text("SELECT count(*) FROM dbperf_books"))).scalar_one()
        newest = (await session.execute(text("SELECT max(id) FROM dbperf_books"))).scalar_one()
    return {"authors": authors, "books": books, "newest": newest}


@app.get("/chain")
async def chain() -> dict[str, int]:
    async with AsyncSession(engine) as session:
        first = (await session.execute(text("SELECT min(id) FROM dbperf_authors"))).scalar_one()
        book = (
            await session.execute(text("SELECT min(id) FROM dbperf_books WHERE author_id = :a"), {"a": first})
        ).scalar_one()
        count = (
            await session.execute(text("SELECT count(*) FROM dbperf_books WHERE id >= :b"), {"b": book or 0})
        ).scalar_one()
    return {"first": first, "count": count}
