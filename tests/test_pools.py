"""Connection pools, waits, timeouts and transactions, in process, on real PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from conftest import MARIA_URL, PG_DB, maria_connect
from opentelemetry.trace import SpanKind
from sqlalchemy import exc, text
from sqlalchemy.pool import NullPool, StaticPool
from support.pipeline import Pipeline, instrument_sqlalchemy, uninstrument_sqlalchemy

from otel_dbperf import Settings
from otel_dbperf import attributes as A
from otel_dbperf import metric_names as M
from otel_dbperf._sqla import pools as _pools
from otel_dbperf._sqla import transactions as _transactions
from otel_dbperf.metrics import default_views

POOL_NAME = "db.client.connection.pool.name"


class Setup(Pipeline):
    """The pipeline with metrics, contrib's SQLAlchemy instrumentation on every engine made from now on,
    and the pool and transaction hooks."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(Settings(**settings), metrics=default_views())
        instrument_sqlalchemy(self.provider, meter_provider=self.meters)
        _pools.install(self.processor.thresholds, self.meters, records=self.processor)
        _transactions.install(self.processor.thresholds, records=self.processor)

    def close(self) -> None:
        _pools.uninstall()
        _transactions.uninstall()
        uninstrument_sqlalchemy()
        super().close()


@pytest.fixture
def setup() -> Iterator[Setup]:
    s = Setup(slow_query_threshold_ms=100, long_transaction_ms=300)
    yield s
    s.close()


# sqlalchemy.create_engine is looked up at each call: the instrumentation wraps it (DB spans)


def _request(setup: Setup, name: str, fn: Any) -> None:
    with setup.tracer.start_as_current_span(name, kind=SpanKind.SERVER):
        fn()


def test_a_request_that_waits_for_the_pool_carries_its_wait(setup: Setup, pg_sync_url: str) -> None:
    engine = sqlalchemy.create_engine(pg_sync_url, pool_size=1, max_overflow=0, pool_timeout=10)
    name = f"postgresql+psycopg://127.0.0.1:5432/{PG_DB}"  # the URL without its user
    holding = threading.Event()
    seen: dict[str, Any] = {}

    def holder() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            holding.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until the other request is seen waiting
                pending = [p for p in setup.points(M.DB_CLIENT_CONNECTION_PENDING_REQUESTS.name) if p.value]
                if pending:
                    seen["pending"] = pending
                    seen["count"] = setup.points(M.DB_CLIENT_CONNECTION_COUNT.name)
                    seen["max"] = setup.points(M.DB_CLIENT_CONNECTION_MAX.name)
                    seen["idle_max"] = setup.points(M.DB_CLIENT_CONNECTION_IDLE_MAX.name)
                    break
                time.sleep(0.01)
            time.sleep(0.3)

    def waiter() -> None:
        holding.wait(10)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    threads = [
        threading.Thread(target=_request, args=(setup, "GET /holder", holder)),
        threading.Thread(target=_request, args=(setup, "GET /waiter", waiter)),
    ]
    try:
        # the connection opened outside any request: on a loaded machine opening it (and the dialect's
        # first-connect queries) may pass the 100 ms at which a wait is an event; /holder only checks it out
        with engine.connect():
            pass
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        engine.dispose()
    roots = setup.roots()
    waited = roots["GET /waiter"].attributes
    assert waited is not None
    assert 250 <= waited[A.DB_POOL_WAIT_MS] < 5000, waited  # the holder kept it >= 300 ms after it was seen
    assert waited[A.DB_CONNECTIONS_USED] == 1
    holder_attrs = roots["GET /holder"].attributes
    assert holder_attrs is not None and holder_attrs[A.DB_POOL_WAIT_MS] < waited[A.DB_POOL_WAIT_MS]
    (event,) = [e for e in roots["GET /waiter"].events if e.name == A.EVENT_POOL_WAIT]
    assert event.attributes is not None
    assert event.attributes[POOL_NAME] == name
    assert event.attributes[A.POOL_SIZE] == 1 and event.attributes[A.POOL_CLASS] == "QueuePool"
    assert event.attributes[A.EVENT_DURATION_MS] == pytest.approx(waited[A.DB_POOL_WAIT_MS])
    assert not [e for e in roots["GET /holder"].events if e.name == A.EVENT_POOL_WAIT]
    # while it waited: one pending request, one connection used, none idle
    assert [(p.attributes[POOL_NAME], p.value) for p in seen["pending"]] == [(name, 1)]
    states = {p.attributes["db.client.connection.state"]: p.value for p in seen["count"]}
    assert states == {"used": 1, "idle": 0}
    waits = setup.points(M.DB_CLIENT_CONNECTION_WAIT_TIME.name)
    assert [(p.attributes, p.count) for p in waits] == [({POOL_NAME: name}, 3)]  # warm-up, holder, waiter
    assert waits[0].max >= 0.25
    (use,) = setup.points(M.DB_CLIENT_CONNECTION_USE_TIME.name)
    assert use.count == 3 and use.max >= 0.3
    (create,) = setup.points(M.DB_CLIENT_CONNECTION_CREATE_TIME.name)
    assert create.count == 1  # one connection, reused
    assert [p.value for p in seen["max"]] == [1]  # pool_size + max_overflow
    assert [p.value for p in seen["idle_max"]] == [1]  # pool_size
    assert not setup.points("db.client.connections.usage")  # contrib's deprecated metric: dropped


def test_a_pool_timeout_is_classified_and_counted(setup: Setup, pg_sync_url: str) -> None:
    engine = sqlalchemy.create_engine(
        pg_sync_url, pool_size=1, max_overflow=0, pool_timeout=0.2, pool_logging_name="orders"
    )

    def request() -> None:
        with engine.connect(), pytest.raises(exc.TimeoutError):
            engine.connect()

    try:
        _request(setup, "GET /timeout", request)
    finally:
        engine.dispose()
    root = setup.roots()["GET /timeout"]
    assert root.attributes is not None
    assert root.attributes[A.DB_POOL_TIMEOUTS] == 1
    assert root.attributes[A.DB_POOL_WAIT_MS] >= 150
    (event,) = [e for e in root.events if e.name == A.EVENT_POOL_WAIT]
    assert event.attributes is not None
    assert event.attributes[A.POOL_TIMED_OUT] is True and event.attributes[POOL_NAME] == "orders"
    assert event.attributes[A.POOL_CHECKED_OUT] == 1
    failed = [s for s in setup.memory.get_finished_spans() if s.name == "connect" and not s.status.is_ok]
    assert [s.attributes[A.DB_ERROR_KIND] for s in failed if s.attributes] == ["pool_timeout"]
    assert [(p.attributes, p.value) for p in setup.points(M.DB_CLIENT_CONNECTION_TIMEOUTS.name)] == [
        ({POOL_NAME: "orders"}, 1)
    ]
    errors = {p.attributes[A.DB_ERROR_KIND]: p.value for p in setup.points(M.DB_ERRORS.name)}
    zero = dict.fromkeys(("statement_timeout", "lock_timeout", "deadlock", "serialization"), 0)
    assert errors == {"pool_timeout": 1, **zero}  # every kind from 0: increase() sees the first
    (waits,) = setup.points(M.DB_CLIENT_CONNECTION_WAIT_TIME.name)
    assert waits.count == 1  # the successful checkout only


def test_a_statement_timeout_is_on_the_span_the_request_and_the_counter(setup: Setup, pg_sync_url: str) -> None:
    engine = sqlalchemy.create_engine(pg_sync_url, connect_args={"options": "-c statement_timeout=50"})

    def request() -> None:
        with engine.connect() as conn, pytest.raises(exc.OperationalError):
            conn.execute(text("SELECT pg_sleep(2)"))

    try:
        _request(setup, "GET /statement", request)
    finally:
        engine.dispose()
    root = setup.roots()["GET /statement"]
    assert root.attributes is not None and root.attributes[A.DB_STATEMENT_TIMEOUTS] == 1
    (query,) = [s for s in setup.memory.get_finished_spans() if s.attributes and A.QUERY_FINGERPRINT in s.attributes]
    assert query.attributes is not None and query.attributes[A.DB_ERROR_KIND] == "statement_timeout"
    errors = {p.attributes[A.DB_ERROR_KIND]: p.value for p in setup.points(M.DB_ERRORS.name) if p.value}
    assert errors == {"statement_timeout": 1}


def test_a_mariadb_deadlock_and_lock_wait_through_sqlalchemy(setup: Setup) -> None:
    """Two requests that lock two rows in opposite orders: InnoDB rolls one back (1213, whose
    SQLSTATE 40001 is no serialization failure here); then a lock wait that times out (1205)."""
    table = f"dbperf_pools_dl_{os.getpid()}"
    admin = maria_connect(autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, n INT) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
    engine = sqlalchemy.create_engine(MARIA_URL, pool_size=2, max_overflow=0)
    both_locked = threading.Barrier(2, timeout=10)
    failed: list[str] = []

    def transaction(first: int, second: int) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(text(f"UPDATE {table} SET n = n + 1 WHERE id = :id"), {"id": first})
                both_locked.wait()
                conn.execute(text(f"UPDATE {table} SET n = n + 1 WHERE id = :id"), {"id": second})
        except exc.OperationalError as err:
            failed.append(f"{first}: {err.orig.args[0]}")

    def lock_wait() -> None:
        with engine.connect() as holder, engine.connect() as waiter:
            holder.execute(text(f"SELECT n FROM {table} WHERE id = 1 FOR UPDATE"))
            waiter.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
            with pytest.raises(exc.OperationalError):
                waiter.execute(text(f"UPDATE {table} SET n = 0 WHERE id = 1"))
            waiter.rollback()
            holder.rollback()

    try:
        threads = [
            threading.Thread(target=_request, args=(setup, f"GET /transfer/{ab[0]}", lambda ab=ab: transaction(*ab)))
            for ab in ((1, 2), (2, 1))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        _request(setup, "GET /lock", lock_wait)
    finally:
        engine.dispose()
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        admin.close()
    assert len(failed) == 1 and failed[0].endswith(": 1213"), failed
    victim = setup.roots()[f"GET /transfer/{failed[0][0]}"]
    assert victim.attributes is not None and victim.attributes[A.DB_DEADLOCKS] == 1
    kinds = sorted(
        str(s.attributes[A.DB_ERROR_KIND])
        for s in setup.memory.get_finished_spans()
        if s.attributes and A.DB_ERROR_KIND in s.attributes
    )
    assert kinds == ["deadlock", "lock_timeout"]
    lock = setup.roots()["GET /lock"]
    assert lock.attributes is not None and lock.attributes[A.DB_LOCK_TIMEOUTS] == 1
    errors = {p.attributes[A.DB_ERROR_KIND]: p.value for p in setup.points(M.DB_ERRORS.name) if p.value}
    assert errors == {"deadlock": 1, "lock_timeout": 1}


def test_transactions_per_request_and_idle_in_transaction(setup: Setup, pg_sync_url: str) -> None:
    engine = sqlalchemy.create_engine(pg_sync_url)

    def request() -> None:
        with engine.begin() as conn:  # a long one: the app sleeps inside it
            conn.execute(text("SELECT 1"))
            time.sleep(0.3)
            conn.execute(text("SELECT pg_sleep(0.05)"))
        with engine.begin() as conn:  # a short one
            conn.execute(text("SELECT 1"))

    try:
        _request(setup, "GET /tx", request)
        with engine.begin() as conn:  # outside any request: not followed
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    attrs = setup.roots()["GET /tx"].attributes
    assert attrs is not None
    assert attrs[A.DB_TRANSACTION_COUNT] == 2
    assert 350 <= attrs[A.DB_TRANSACTION_MAX_MS] < 5000
    # the sleep is idle time, the pg_sleep is not
    assert 300 <= attrs[A.DB_IDLE_IN_TRANSACTION_MS] <= attrs[A.DB_TRANSACTION_MAX_MS] - 50
    assert attrs[A.DB_LONG_TRANSACTION_COUNT] == 1  # 300 ms: the long one is >= 350 ms, the short one far below
    (event,) = [e for e in setup.roots()["GET /tx"].events if e.name == A.EVENT_LONG_TRANSACTION]
    assert event.attributes is not None
    assert event.attributes[A.EVENT_DURATION_MS] == attrs[A.DB_TRANSACTION_MAX_MS]
    assert event.attributes[A.EVENT_THRESHOLD_MS] == 300


def test_null_and_static_pools_are_reported_as_what_they_are(setup: Setup, tmp_path: Any) -> None:
    null = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'null.db'}", poolclass=NullPool)
    static = sqlalchemy.create_engine("sqlite://", poolclass=StaticPool)
    null_name, static_name = f"sqlite:///{tmp_path / 'null.db'}", "sqlite://"
    ours = (null_name, static_name)  # an earlier test's engine may not be garbage collected yet

    def counts() -> dict[tuple[Any, Any], Any]:
        return {
            (p.attributes[POOL_NAME], p.attributes["db.client.connection.state"]): p.value
            for p in setup.points(M.DB_CLIENT_CONNECTION_COUNT.name)
            if p.attributes[POOL_NAME] in ours
        }

    try:
        with null.connect() as a, static.connect() as b:
            a.execute(text("SELECT 1"))
            b.execute(text("SELECT 1"))
            states = counts()
            assert states == {(null_name, "used"): 1, (null_name, "idle"): 0, (static_name, "used"): 1,
                              (static_name, "idle"): 0}  # fmt: skip
            maxima = {p.attributes[POOL_NAME]: p.value for p in setup.points(M.DB_CLIENT_CONNECTION_MAX.name)
                      if p.attributes[POOL_NAME] in ours}  # fmt: skip
            assert maxima == {static_name: 1}  # a NullPool has no limit
        states = counts()
        assert states == {(null_name, "used"): 0, (null_name, "idle"): 0, (static_name, "used"): 0,
                          (static_name, "idle"): 1}  # fmt: skip
    finally:
        null.dispose()
        static.dispose()


def test_async_engine_waits_are_measured(setup: Setup, pg_async_url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> None:
        # not traced: contrib's uninstrument fails on a disposed async engine's listeners (and then on
        # every engine after it); the pool hooks need no DB spans
        plain = getattr(create_async_engine, "__wrapped__", create_async_engine)
        engine = plain(pg_async_url, pool_size=1, max_overflow=0)

        async def one(name: str, hold: float) -> None:
            with setup.tracer.start_as_current_span(name, kind=SpanKind.SERVER):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                    await asyncio.sleep(hold)

        try:
            first = asyncio.create_task(one("GET /first", 0.3))
            await asyncio.sleep(0.1)
            await one("GET /second", 0)
            await first
        finally:
            await engine.dispose()

    asyncio.run(main())
    roots = setup.roots()
    second = roots["GET /second"].attributes
    assert second is not None and 100 <= second[A.DB_POOL_WAIT_MS] < 5000
    (waits,) = setup.points(M.DB_CLIENT_CONNECTION_WAIT_TIME.name)
    assert waits.count == 2 and waits.attributes == {POOL_NAME: f"postgresql+asyncpg://127.0.0.1:5432/{PG_DB}"}
