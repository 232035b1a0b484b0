"""Schema and seed data shared by the test apps (stand-ins for user code)."""

from __future__ import annotations

import time

from sqlalchemy import Engine, ForeignKey, String, event, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

AUTHORS = 8
BOOKS_PER_AUTHOR = 2


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "dbperf_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200))
    books: Mapped[list[Book]] = relationship(back_populates="author", lazy="select")


class Book(Base):
    __tablename__ = "dbperf_books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("dbperf_authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def seed(engine: Engine) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(Author),
            [{"id": i, "name": f"author {i}", "email": f"author{i}@example.org"} for i in range(1, AUTHORS + 1)],
        )
        conn.execute(
            insert(Book),
            [
                {"title": f"book {a}.{b}", "author_id": a}
                for a in range(1, AUTHORS + 1)
                for b in range(BOOKS_PER_AUTHOR)
            ],
        )


def add_sqlite_sleep(engine: Engine) -> None:
    """SQLite has no sleep(): register one so a query can be genuinely slow."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.create_function("dbperf_sleep", 1, lambda s: time.sleep(s) or 0)
