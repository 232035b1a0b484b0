"""Schema and seed data of the key-value / template test apps (tables of their own: the PostgreSQL
database is shared with other test runs)."""

from __future__ import annotations

from sqlalchemy import Engine, ForeignKey, String, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

AUTHORS = 10
BOOKS_PER_AUTHOR = 2


class Base(DeclarativeBase):
    pass


class Writer(Base):
    __tablename__ = "beyondsql_writers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    books: Mapped[list[Title]] = relationship(back_populates="writer", lazy="select")


class Title(Base):
    __tablename__ = "beyondsql_titles"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    writer_id: Mapped[int] = mapped_column(ForeignKey("beyondsql_writers.id"))
    writer: Mapped[Writer] = relationship(back_populates="books")


def seed(engine: Engine) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(Writer), [{"id": i, "name": f"writer {i}"} for i in range(1, AUTHORS + 1)])
        conn.execute(
            insert(Title),
            [
                {"name": f"title {a}.{b}", "writer_id": a}
                for a in range(1, AUTHORS + 1)
                for b in range(BOOKS_PER_AUTHOR)
            ],
        )
