"""A Celery app with a real Redis broker and result backend, run by a real worker under
opentelemetry-instrument. Lines marked ``# marker: NAME`` are looked up by the tests."""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from beyondsql_models import Writer
from celery import Celery
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import Session

REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('APP_REDIS_DB', '11')}"
QUEUE = os.environ.get("APP_CELERY_QUEUE", "beyondsql")  # the test session's own

app = Celery("beyondsql_tasks", broker=REDIS_URL, backend=REDIS_URL)
app.conf.task_default_queue = QUEUE
app.conf.broker_connection_retry_on_startup = True

engine = create_engine(os.environ.get("APP_DB_URL", "sqlite://"))
cache = redis.Redis.from_url(REDIS_URL)
_statements = threading.local()


@event.listens_for(engine, "before_cursor_execute")
def _count(*_: Any) -> None:  # the SQL the task really ran, for the test to compare
    _statements.n = getattr(_statements, "n", 0) + 1


@app.task(name="beyondsql.writers_report")
def writers_report() -> dict[str, int]:
    _statements.n = 0
    books = 0
    with Session(engine) as session:
        for writer in session.scalars(select(Writer).order_by(Writer.id)):
            books += len(writer.books)  # marker: task_lazy
    return {"books": books, "statements": _statements.n}


@app.task(name="beyondsql.warm_cache")
def warm_cache(n: int) -> int:
    hits = 0
    for i in range(n):
        hits += cache.get(f"beyondsql:warm:{i}") is not None  # marker: task_get
    return hits
