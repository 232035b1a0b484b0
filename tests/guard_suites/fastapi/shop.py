"""A FastAPI shop on async SQLAlchemy (asyncpg): N+1 routes, their fix, a one-query route."""

from __future__ import annotations

import os

from fastapi import FastAPI
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncAttrs, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload
from sqlalchemy.pool import NullPool

# NullPool: each test's event loop gets its own connections
engine = create_async_engine(os.environ["GUARD_PG_URL"], poolclass=NullPool)
Session = async_sessionmaker(engine, expire_on_commit=False)


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list[Book]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


async def seed() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    async with Session() as session:
        for i in range(1, 9):
            session.add(Author(id=i, name=f"author {i}", books=[Book(title=f"book {i}.{j}") for j in range(2)]))
        await session.commit()


app = FastAPI()


@app.get("/authors")
async def authors() -> list[dict[str, object]]:
    async with Session() as session:
        found = (await session.scalars(select(Author).order_by(Author.id))).all()
        return [{"name": a.name, "books": len(await a.awaitable_attrs.books)} for a in found]  # line: lazy


@app.get("/authors/loop")
async def authors_loop() -> list[dict[str, object]]:
    async with Session() as session:
        found = (await session.scalars(select(Author).order_by(Author.id))).all()
        rows = []
        for a in found:
            titles = (await session.scalars(select(Book.title).where(Book.author_id == a.id))).all()  # line: loop
            rows.append({"name": a.name, "books": titles})
        return rows


@app.get("/authors/fixed")
async def authors_fixed() -> list[dict[str, object]]:
    async with Session() as session:
        found = (await session.scalars(select(Author).options(selectinload(Author.books)).order_by(Author.id))).all()
        return [{"name": a.name, "books": len(a.books)} for a in found]


@app.get("/authors/{author_id}")
async def author(author_id: int) -> dict[str, object]:
    async with Session() as session:
        found = await session.get(Author, author_id)
        return {"name": found.name if found else None}
