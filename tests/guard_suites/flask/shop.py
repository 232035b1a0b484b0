"""A small Flask shop on SQLAlchemy: an N+1 on /authors, its fix, one-query routes, a duplicate."""

from __future__ import annotations

import os

from flask import Flask, jsonify, render_template
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

engine = create_engine(os.environ.get("SHOP_DB_URL", "sqlite://"))


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
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        for i in range(1, 9):
            session.add(Author(id=i, name=f"author {i}", books=[Book(title=f"book {i}.{j}") for j in range(3)]))
        session.commit()


app = Flask(__name__)


@app.get("/authors")
def authors():  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        found = session.scalars(select(Author).order_by(Author.id)).all()
        return jsonify([{"name": a.name, "books": len(a.books)} for a in found])  # line: n+1


@app.get("/authors/page")
def authors_page():  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        found = session.scalars(select(Author).order_by(Author.id)).all()
        return render_template("authors.html", authors=found)  # line: view


@app.get("/authors/fixed")
def authors_fixed():  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        found = session.scalars(select(Author).options(selectinload(Author.books)).order_by(Author.id)).all()
        return jsonify([{"name": a.name, "books": len(a.books)} for a in found])


@app.get("/authors/<int:author_id>")
def author(author_id: int):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        found = session.get(Author, author_id)
        return jsonify(name=found.name if found else None)


@app.get("/authors/twice/<int:author_id>")
def author_twice(author_id: int):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        query = select(Author.name).where(Author.id == author_id)
        first = conn.execute(query).scalar()
        again = conn.execute(query).scalar()  # line: duplicate
        return jsonify(name=first, same=first == again)
