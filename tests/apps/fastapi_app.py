"""A FastAPI + async SQLAlchemy (asyncpg) app, launched unchanged under opentelemetry-instrument."""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI
from models import Author, Book
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

# at most 20 connections: the PostgreSQL server may be shared (its max_connections is 100 by default)
engine = create_async_engine(os.environ["APP_DB_URL"], pool_size=10, max_overflow=10)
app = FastAPI()


@app.get("/ping")
async def ping() -> str:
    return "ok"


@app.get("/author/{author_id}")
async def author(author_id: int) -> dict[str, object]:
    async with AsyncSession(engine) as session:
        found = await session.get(Author, author_id)  # marker: async_point
        return {"name": found.name if found else None}


@app.get("/authors")
async def authors() -> list[dict[str, object]]:
    async with AsyncSession(engine) as session:
        result = []
        for a in (await session.scalars(select(Author).order_by(Author.id))).all():
            books = (await session.scalars(select(Book).where(Book.author_id == a.id))).all()  # marker: async_n1
            result.append({"name": a.name, "books": len(books)})
        return result


@app.get("/slow")
async def slow() -> str:
    async with AsyncSession(engine) as session:
        await session.execute(text("SELECT pg_sleep(0.3)"))  # marker: async_slow
    return "ok"


@app.get("/n/{k}")
async def n_queries(k: int) -> dict[str, int]:
    async with AsyncSession(engine) as session:
        for i in range(k):
            await session.execute(text("SELECT name FROM dbperf_authors WHERE id = :i"), {"i": i})
            await asyncio.sleep(0.001)
    return {"k": k}
