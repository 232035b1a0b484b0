"""A Flask library on SQLAlchemy (SQLite in memory): an N+1 on /authors, one query on /authors/fixed."""

from __future__ import annotations

from flask import Flask, jsonify
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload
from sqlalchemy.pool import StaticPool

engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})


class Base(DeclarativeBase):
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


def seed() -> None:
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        for i in range(1, 9):
            session.add(Author(id=i, name=f"author {i}", books=[Book(title=f"book {i}.{j}") for j in range(2)]))
        session.commit()


app = Flask(__name__)


@app.get("/authors")
def authors():  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        found = session.scalars(select(Author).order_by(Author.id)).all()
        return jsonify([{"name": a.name, "books": len(a.books)} for a in found])  # line: n+1


@app.get("/authors/fixed")
def authors_fixed():  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        found = session.scalars(select(Author).options(selectinload(Author.books)).order_by(Author.id)).all()
        return jsonify([{"name": a.name, "books": len(a.books)} for a in found])
