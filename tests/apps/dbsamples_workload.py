"""A script's SQLAlchemy workload on PostgreSQL, run under opentelemetry-instrument (tests/test_dbsamples_report.py,
which makes and fills its table).

Lookups by key, IN-lists of several lengths, an update, and a frequent
full scan (a LIKE over every row) that is never slow on its own.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from sqlalchemy import Integer, String, create_engine, func, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

engine = create_engine(os.environ["APP_DB_URL"])


class Base(DeclarativeBase):
    pass


class Book(Base):
    __tablename__ = "dbsamples_books"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    stock: Mapped[int] = mapped_column(Integer)


tracer = trace.get_tracer("workload")
for i in range(8):
    with tracer.start_as_current_span("job", kind=trace.SpanKind.SERVER), Session(engine) as session:
        session.get(Book, 1 + i)
        session.scalars(select(Book).where(Book.id.in_(list(range(1, 2 + i % 3))))).all()
        session.scalar(select(func.count()).select_from(Book).where(Book.title.like(f"%needle {i}%")))
        session.execute(update(Book).where(Book.id == 3).values(stock=Book.stock + 1))
        session.commit()
