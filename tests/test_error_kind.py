"""dbperf.db.error.kind from real driver errors: PostgreSQL (psycopg, psycopg2, asyncpg, through
SQLAlchemy) and MariaDB (PyMySQL), provoked with two connections where the error needs two."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import maria_connect
from sqlalchemy import create_engine, exc, text

from otel_dbperf._error_kind import classify

TABLE = f"dbperf_pools_err_{os.getpid()}"


def _raised(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except BaseException as err:  # noqa: BLE001
        return err
    raise AssertionError("no error was raised")


@pytest.fixture
def pg_table(pg_dsn: str) -> Iterator[str]:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, n int)")
        conn.execute(f"INSERT INTO {TABLE} VALUES (1, 0), (2, 0)")
    yield TABLE
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def test_statement_timeout_on_each_postgresql_driver(pg_dsn: str, pg_sync_url: str, pg_async_url: str) -> None:
    import psycopg
    import psycopg2

    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SET statement_timeout = 50")
        err = _raised(lambda: conn.execute("SELECT pg_sleep(2)"))
    assert isinstance(err, psycopg.errors.QueryCanceled)
    assert classify(err) == "statement_timeout"

    conn2 = psycopg2.connect(pg_dsn)
    try:
        cur = conn2.cursor()
        cur.execute("SET statement_timeout = 50")
        err = _raised(lambda: cur.execute("SELECT pg_sleep(2)"))
        assert err.pgcode == "57014"  # type: ignore[attr-defined]
        assert classify(err) == "statement_timeout"
    finally:
        conn2.close()

    engine = create_engine(pg_sync_url, connect_args={"options": "-c statement_timeout=50"})
    try:
        with engine.connect() as c:
            err = _raised(lambda: c.execute(text("SELECT pg_sleep(2)")))
        assert isinstance(err, exc.OperationalError)  # SQLAlchemy's wrapper: the kind is in .orig
        assert classify(err) == "statement_timeout"
    finally:
        engine.dispose()

    async def on_asyncpg() -> BaseException:
        import asyncpg

        conn = await asyncpg.connect(pg_async_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute("SET statement_timeout = 50")
            try:
                await conn.execute("SELECT pg_sleep(2)")
            except BaseException as err:  # noqa: BLE001
                return err
            raise AssertionError("no error was raised")
        finally:
            await conn.close()

    err = asyncio.run(on_asyncpg())
    assert classify(err) == "statement_timeout"


def test_lock_timeout_with_two_postgresql_connections(pg_dsn: str, pg_table: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn) as holder, psycopg.connect(pg_dsn) as waiter:
        holder.execute(f"SELECT * FROM {pg_table} WHERE id = 1 FOR UPDATE")  # holds the row lock (open transaction)
        waiter.execute("SET lock_timeout = 50")
        err = _raised(lambda: waiter.execute(f"UPDATE {pg_table} SET n = 1 WHERE id = 1"))
        assert isinstance(err, psycopg.errors.LockNotAvailable)
        assert classify(err) == "lock_timeout"
        holder.rollback()


def test_deadlock_with_two_postgresql_connections(pg_dsn: str, pg_table: str) -> None:
    import psycopg

    errors: list[BaseException] = []
    both_locked = threading.Barrier(2, timeout=10)

    def transaction(first: int, second: int) -> None:
        with psycopg.connect(pg_dsn) as conn:
            try:
                conn.execute(f"UPDATE {pg_table} SET n = n + 1 WHERE id = %s", (first,))
                both_locked.wait()
                conn.execute(f"UPDATE {pg_table} SET n = n + 1 WHERE id = %s", (second,))
                conn.commit()
            except psycopg.Error as err:
                errors.append(err)
                conn.rollback()

    threads = [threading.Thread(target=transaction, args=ab) for ab in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(errors) == 1, errors  # PostgreSQL breaks the cycle by failing one of the two
    assert isinstance(errors[0], psycopg.errors.DeadlockDetected)
    assert classify(errors[0]) == "deadlock"


def test_serialization_failure_on_postgresql(pg_dsn: str, pg_table: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn) as first, psycopg.connect(pg_dsn, autocommit=True) as other:
        first.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        first.execute(f"SELECT n FROM {pg_table} WHERE id = 2")  # the snapshot is taken
        other.execute(f"UPDATE {pg_table} SET n = 5 WHERE id = 2")
        err = _raised(lambda: first.execute(f"UPDATE {pg_table} SET n = 6 WHERE id = 2"))
        assert isinstance(err, psycopg.errors.SerializationFailure)
        assert classify(err) == "serialization"
        first.rollback()


def test_other_postgresql_errors_have_no_kind(pg_dsn: str, pg_table: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn) as conn:
        err = _raised(lambda: conn.execute(f"INSERT INTO {pg_table} VALUES (1, 0)"))
        assert isinstance(err, psycopg.errors.UniqueViolation)
        assert classify(err) is None
        conn.rollback()
        assert classify(_raised(lambda: conn.execute("SELEC 1"))) is None
    assert classify(ValueError(1205)) is None  # a number alone is no MySQL error
    assert classify(None) is None


def test_pool_timeout_of_a_real_queue_pool(pg_sync_url: str) -> None:
    engine = create_engine(pg_sync_url, pool_size=1, max_overflow=0, pool_timeout=0.05)
    try:
        with engine.connect():
            err = _raised(engine.connect)
        assert isinstance(err, exc.TimeoutError)
        assert classify(err) == "pool_timeout"
    finally:
        engine.dispose()


def test_mariadb_lock_wait_timeout_and_statement_timeout() -> None:
    holder, waiter = maria_connect(), maria_connect()
    try:
        with holder.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
            cur.execute(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, n INT) ENGINE=InnoDB")
            cur.execute(f"INSERT INTO {TABLE} VALUES (1, 0)")
            holder.commit()
            cur.execute("BEGIN")
            cur.execute(f"SELECT * FROM {TABLE} WHERE id = 1 FOR UPDATE")
        with waiter.cursor() as cur:
            cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
            err = _raised(lambda: cur.execute(f"UPDATE {TABLE} SET n = 1 WHERE id = 1"))
            assert err.args[0] == 1205
            assert classify(err) == "lock_timeout"
            waiter.rollback()
            cur.execute("SET SESSION max_statement_time = 0.05")
            err = _raised(lambda: cur.execute(f"SELECT * FROM {TABLE} t1, {TABLE} t2 WHERE SLEEP(1) = 0"))
            assert err.args[0] == 1969  # MariaDB's max_statement_time
            assert classify(err) == "statement_timeout"
    finally:
        waiter.close()  # first: its open transaction holds a metadata lock that DROP TABLE would wait for
        holder.rollback()
        with holder.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        holder.close()


def test_mariadb_deadlock() -> None:
    import pymysql

    setup = maria_connect(autocommit=True)
    with setup.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cur.execute(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, n INT) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {TABLE} VALUES (1, 0), (2, 0)")
    errors: list[BaseException] = []
    both_locked = threading.Barrier(2, timeout=10)

    def transaction(first: int, second: int) -> None:
        conn = maria_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION innodb_lock_wait_timeout = 20")
                cur.execute(f"UPDATE {TABLE} SET n = n + 1 WHERE id = %s", (first,))
                both_locked.wait()
                cur.execute(f"UPDATE {TABLE} SET n = n + 1 WHERE id = %s", (second,))
            conn.commit()
        except pymysql.err.MySQLError as err:
            errors.append(err)
            conn.rollback()
        finally:
            conn.close()

    try:
        threads = [threading.Thread(target=transaction, args=ab) for ab in ((1, 2), (2, 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(errors) == 1, errors  # InnoDB rolls one of the two back
        assert errors[0].args[0] == 1213
        assert classify(errors[0]) == "deadlock"
    finally:
        with setup.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        setup.close()


def test_mysql_max_execution_time_as_pymysql_raises_it() -> None:
    """MySQL's 3024 (``max_execution_time``): no MySQL server here (MariaDB says 1969 instead), so
    the error packet MySQL sends is parsed by PyMySQL's own reader, the exception the app would get."""
    import struct

    import pymysql

    packet = b"\xff" + struct.pack("<H", 3024) + b"#HY000" + b"Query execution was interrupted, maximum statement"
    err = _raised(lambda: pymysql.err.raise_mysql_exception(packet))
    assert isinstance(err, pymysql.err.OperationalError) and err.args[0] == 3024
    assert classify(err) == "statement_timeout"
    wrapped = _raised(lambda: _reraise_as_sqlalchemy(err))
    assert isinstance(wrapped, exc.OperationalError) and classify(wrapped) == "statement_timeout"


def _reraise_as_sqlalchemy(err: BaseException) -> None:
    raise exc.OperationalError("SELECT ?", {}, err) from err
