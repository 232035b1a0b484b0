"""EXPLAIN for slow SELECTs against real PostgreSQL (psycopg 3, psycopg2, asyncpg), MariaDB (pymysql)
and SQLite: the safety rules, verdicts, rate limits and the SQLAlchemy integration."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg2
import pytest
from conftest import MARIA_URL
from conftest import maria_connect as _maria_connect
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine, create_engine, text

# Imported before any instrumentation: contrib's wrapped create_engine would otherwise be bound
# into sqlalchemy.ext.asyncio for good, and instrument every later async engine twice.
from sqlalchemy.ext.asyncio import create_async_engine
from support.pipeline import instrument_sqlalchemy, uninstrument_sqlalchemy

from otel_dbperf._sqla import explain as _explain
from otel_dbperf._sqla.explain import ExplainConfig, Explainer, Plan, gate, refusal, verdicts
from otel_dbperf._sqla.explain import plan as plan_module

REQUIRE_SERVICES = os.environ.get("DBPERF_REQUIRE_SERVICES") == "1"
BIG = "dbperf_explain_big"  # 50k rows, no index on name or qty
SCRATCH = "dbperf_explain_scratch"  # the user's writes
ROWS = 50_000
SECRET = "dbperf-secret-value"  # a parameter value that must never show up in a plan or a log
UNLIMITED = ExplainConfig(per_fingerprint_interval_s=0, max_per_minute=10_000)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- databases -------------------------------------------------------------------------------


def _unreachable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_tables(pg_dsn: str) -> Iterator[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {BIG}, {SCRATCH}")
        conn.execute(f"CREATE TABLE {BIG} (id serial PRIMARY KEY, name text NOT NULL, qty int NOT NULL)")
        conn.execute(f"INSERT INTO {BIG} (name, qty) SELECT 'n' || g, g FROM generate_series(1, {ROWS}) g")
        conn.execute(f"ANALYZE {BIG}")
        conn.execute(f"CREATE TABLE {SCRATCH} (v text)")
    yield pg_dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {BIG}, {SCRATCH}")


@pytest.fixture(scope="session")
def maria_tables() -> Iterator[None]:
    conn = _maria_connect(autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {BIG}, {SCRATCH}")
        cur.execute(f"CREATE TABLE {BIG} (id int AUTO_INCREMENT PRIMARY KEY, name varchar(40), qty int) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {BIG} (name, qty) SELECT concat('n', seq), seq FROM seq_1_to_{ROWS}")
        cur.execute(f"ANALYZE TABLE {BIG}")
        cur.fetchall()
        cur.execute(f"CREATE TABLE {SCRATCH} (v varchar(40)) ENGINE=InnoDB")
    yield
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {BIG}, {SCRATCH}")
    conn.close()


def _sqlite_file(tmp_path: Path) -> str:
    path = str(tmp_path / "explain.db")
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE {BIG} (id INTEGER PRIMARY KEY, name TEXT, qty INT)")
        conn.execute(
            f"WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {ROWS}) "
            f"INSERT INTO {BIG} (name, qty) SELECT 'n' || i, i FROM g"
        )
        conn.execute(f"CREATE TABLE {SCRATCH} (v TEXT)")
    conn.close()
    return path


@dataclass
class Db:
    """One driver: how to connect, its placeholders, and how to read the connection's state."""

    driver: str
    dialect: str
    connect: Callable[[bool], Any]  # autocommit -> a new raw DB-API connection
    p: str  # positional placeholder
    named: Callable[[str], str]  # named placeholder
    in_transaction: Callable[[Any], bool]
    other: Callable[[], Any]  # a second, autocommit connection (another session)

    def query(self, conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = conn.cursor()
        cur.execute(sql, params) if params is not None else cur.execute(sql)
        rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
        cur.close()
        return rows

    def begin(self, conn: Any) -> None:
        if self.driver == "sqlite":
            self.query(conn, "BEGIN")  # sqlite3 begins only before DML on its own


def _pg_status(conn: Any) -> int:
    return int(conn.info.transaction_status)


def _maria_in_transaction(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT @@in_transaction")
        return bool(cur.fetchone()[0])


def _close_all(connections: list[Any]) -> None:
    for conn in connections:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - already closed by the test
            pass


@pytest.fixture(params=["psycopg", "psycopg2", "pymysql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    opened: list[Any] = []

    def track(conn: Any) -> Any:
        opened.append(conn)
        return conn

    driver = request.param
    if driver in ("psycopg", "psycopg2"):
        dsn = request.getfixturevalue("pg_tables")

        def pg_connect(autocommit: bool) -> Any:
            conn = psycopg.connect(dsn) if driver == "psycopg" else psycopg2.connect(dsn)
            conn.autocommit = autocommit
            return track(conn)

        yield Db(
            driver,
            "postgresql",
            pg_connect,
            "%s",
            lambda n: f"%({n})s",
            lambda c: _pg_status(c) == 2,
            lambda: pg_connect(True),
        )
        _close_all(opened)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {SCRATCH}")
    elif driver == "pymysql":
        request.getfixturevalue("maria_tables")
        yield Db(
            driver,
            "mysql",
            lambda ac: track(_maria_connect(ac)),
            "%s",
            lambda n: f"%({n})s",
            _maria_in_transaction,
            lambda: track(_maria_connect(True)),
        )
        _close_all(opened)
        with _maria_connect(True) as conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM {SCRATCH}")
    else:
        path = _sqlite_file(tmp_path)

        def sqlite_connect(autocommit: bool) -> Any:
            return track(sqlite3.connect(path, isolation_level=None if autocommit else ""))

        yield Db(
            driver,
            "sqlite",
            sqlite_connect,
            "?",
            lambda n: f":{n}",
            lambda c: bool(c.in_transaction),
            lambda: sqlite_connect(True),
        )
        _close_all(opened)


def point_query(db: Db) -> tuple[str, tuple[Any, ...]]:
    return f"SELECT name, qty FROM {BIG} WHERE name = {db.p}", ("n42",)


# --- which statements are explained ---------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ("SELECT * FROM t WHERE a = %s", None),
        ("  select a from t; ", None),
        ("WITH x AS (SELECT a FROM t) SELECT * FROM x", None),
        ("SELECT ';' AS semi, 'insert into' AS words FROM t", None),
        ("SELECT * FROM t -- DELETE FROM t; \n WHERE a = 1", None),
        ("INSERT INTO t VALUES (1)", "not_select"),
        ("UPDATE t SET a = 1", "not_select"),
        ("DELETE FROM t", "not_select"),
        ("CREATE TABLE x (a int)", "not_select"),
        ("DROP TABLE t", "not_select"),
        ("SELECT 1; DROP TABLE t", "not_select"),
        ("SELECT * INTO new_t FROM t", "not_select"),
        ("SELECT a INTO @v FROM t", "not_select"),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "not_select"),
        ("SELECT * FROM t FOR UPDATE", "not_select"),
        ("SELECT * FROM t FOR NO KEY UPDATE", "not_select"),
        ("SELECT * FROM t FOR SHARE", "not_select"),
        ("SELECT * FROM t LOCK IN SHARE MODE", "not_select"),
        ("SELECT 1 /*!, (SELECT 1 FROM t FOR UPDATE) */", "not_select"),
        ("EXPLAIN SELECT 1", "not_select"),
        ("VALUES (1)", "not_select"),
        ("SHOW TABLES", "not_select"),
        ("", "not_select"),
        ("SELECT " + "a, " * 40_000 + "b FROM t", "too_long"),
    ],
)
def test_only_a_single_plain_select_is_explained(statement: str, reason: str | None) -> None:
    assert refusal(statement) == reason


def test_with_analyze_calls_with_lasting_effects_are_refused() -> None:
    for call in ("nextval('s')", "pg_advisory_lock(1)", "GET_LOCK('x', 1)", "pg_notify('c', 'x')"):
        assert refusal(f"SELECT {call}") is None
        assert refusal(f"SELECT {call}", analyze_on=True) == "side_effects"


def test_writes_are_never_explained_and_never_run(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    writes = [
        f"INSERT INTO {SCRATCH} (v) VALUES ('x')",
        f"UPDATE {BIG} SET qty = 0",
        f"DELETE FROM {SCRATCH}",
        f"SELECT 1; INSERT INTO {SCRATCH} (v) VALUES ('x')",
        f"DROP TABLE {SCRATCH}",
    ]
    if db.dialect == "postgresql":
        writes.append(f"SELECT * INTO dbperf_explain_into FROM {BIG}")
        writes.append(f"WITH d AS (DELETE FROM {SCRATCH} RETURNING *) SELECT * FROM d")
    for sql in writes:
        assert explainer.explain(conn, db.dialect, sql, None, "fp") is None
    assert explainer.stats()["skipped"] == {"not_select": len(writes)}
    assert explainer.stats()["explained"] == 0
    assert db.query(conn, f"SELECT count(*) FROM {SCRATCH}") == [(0,)]
    assert db.query(conn, f"SELECT count(*) FROM {BIG} WHERE qty = 0") == [(0,)]


# --- the user's transaction and connection ---------------------------------------------------


def test_user_transaction_results_and_uncommitted_writes_are_untouched(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    db.begin(conn)
    cur = conn.cursor()
    cur.execute(f"INSERT INTO {SCRATCH} (v) VALUES ({db.p})", ("mine",))
    sql, params = point_query(db)
    cur.execute(sql, params)  # the user's query: its rows are not fetched yet

    plan = explainer.explain(conn, db.dialect, sql, params, "fp")

    assert plan is not None and explainer.stats()["explained"] == 1
    assert [tuple(r) for r in cur.fetchall()] == [("n42", 42)]
    assert db.in_transaction(conn)
    assert db.query(conn, f"SELECT v FROM {SCRATCH}") == [("mine",)]
    other = db.other()
    assert db.query(other, f"SELECT count(*) FROM {SCRATCH}") == [(0,)]  # still uncommitted
    cur.execute(f"INSERT INTO {SCRATCH} (v) VALUES ({db.p})", ("later",))  # still writable
    conn.commit()
    assert sorted(db.query(other, f"SELECT v FROM {SCRATCH}")) == [("later",), ("mine",)]


def test_user_rollback_after_explain_still_undoes_their_writes(db: Db) -> None:
    conn = db.connect(False)
    db.begin(conn)
    db.query(conn, f"INSERT INTO {SCRATCH} (v) VALUES ({db.p})", ("mine",))
    sql, params = point_query(db)
    assert Explainer(UNLIMITED).explain(conn, db.dialect, sql, params, "fp") is not None
    conn.rollback()
    assert db.query(db.other(), f"SELECT count(*) FROM {SCRATCH}") == [(0,)]


@pytest.mark.parametrize("autocommit", [True, False])
def test_idle_connection_stays_idle_and_keeps_its_autocommit_mode(db: Db, autocommit: bool) -> None:
    conn = db.connect(autocommit)
    db.query(conn, "SELECT 1")
    if not autocommit:
        conn.commit()
    assert not db.in_transaction(conn)
    sql, params = point_query(db)
    assert Explainer(UNLIMITED).explain(conn, db.dialect, sql, params, "fp") is not None
    assert not db.in_transaction(conn)
    if db.driver == "pymysql":
        assert conn.get_autocommit() is autocommit
    elif db.driver == "sqlite":
        assert conn.isolation_level == (None if autocommit else "")
    else:
        assert conn.autocommit is autocommit
    # A later write of the user behaves as their mode says.
    db.query(conn, f"INSERT INTO {SCRATCH} (v) VALUES ({db.p})", ("w",))
    assert db.in_transaction(conn) is (not autocommit)
    conn.rollback()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_pg_snapshot_and_session_settings_are_kept(pg_tables: str, driver: str) -> None:
    conn = psycopg.connect(pg_tables) if driver == "psycopg" else psycopg2.connect(pg_tables)
    try:
        cur = conn.cursor()
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SET LOCAL statement_timeout = '7s'")
        cur.execute(f"SELECT count(*) FROM {SCRATCH}")
        assert cur.fetchall() == [(0,)]
        cur.execute("SELECT pg_current_snapshot()::text, txid_current_if_assigned()")
        before = cur.fetchall()
        with psycopg.connect(pg_tables, autocommit=True) as other:
            other.execute(f"INSERT INTO {SCRATCH} (v) VALUES ('committed elsewhere')")

        assert Explainer(UNLIMITED).explain(conn, "postgresql", f"SELECT * FROM {BIG} WHERE qty = 3", None, "f")

        cur.execute("SELECT pg_current_snapshot()::text, txid_current_if_assigned()")
        assert cur.fetchall() == before
        cur.execute(f"SELECT count(*) FROM {SCRATCH}")
        assert cur.fetchall() == [(0,)]  # same snapshot: the other session's row is not visible
        cur.execute("SELECT current_setting('statement_timeout'), current_setting('transaction_read_only')")
        assert cur.fetchall() == [("7s", "off")]
        conn.commit()
    finally:
        conn.close()
        with psycopg.connect(pg_tables, autocommit=True) as other:
            other.execute(f"DELETE FROM {SCRATCH}")


def test_mariadb_snapshot_and_session_state_are_kept(maria_tables: None) -> None:
    conn = _maria_connect(False)
    other = _maria_connect(True)
    try:
        cur = conn.cursor()
        cur.execute("SET @dbperf_user = 'u'")
        cur.execute("SELECT @@max_statement_time, @@tx_read_only, @@autocommit, @dbperf_user")
        session_before = cur.fetchall()
        cur.execute(f"SELECT count(*) FROM {SCRATCH}")  # REPEATABLE READ: the snapshot starts here
        assert cur.fetchall() == ((0,),)
        other.cursor().execute(f"INSERT INTO {SCRATCH} (v) VALUES ('committed elsewhere')")

        assert Explainer(UNLIMITED).explain(conn, "mysql", f"SELECT * FROM {BIG} WHERE qty = 3", None, "f")

        cur.execute(f"SELECT count(*) FROM {SCRATCH}")
        assert cur.fetchall() == ((0,),)
        cur.execute("SELECT @@in_transaction")
        assert cur.fetchall() == ((1,),)
        cur.execute("SELECT @@max_statement_time, @@tx_read_only, @@autocommit, @dbperf_user")
        assert cur.fetchall() == session_before
        conn.commit()
    finally:
        other.cursor().execute(f"DELETE FROM {SCRATCH}")
        conn.close()
        other.close()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_pg_failed_transaction_is_skipped_and_left_as_it_was(pg_tables: str, driver: str) -> None:
    conn = psycopg.connect(pg_tables) if driver == "psycopg" else psycopg2.connect(pg_tables)
    explainer = Explainer(UNLIMITED)
    try:
        cur = conn.cursor()
        with pytest.raises(Exception, match="division by zero"):
            cur.execute("SELECT 1 / 0")
        assert _pg_status(conn) == 3  # INERROR

        assert explainer.explain(conn, "postgresql", f"SELECT * FROM {BIG} WHERE qty = 1", None, "f") is None

        assert explainer.stats()["skipped"] == {"failed_transaction": 1}
        assert _pg_status(conn) == 3
        conn.rollback()
        assert explainer.explain(conn, "postgresql", f"SELECT * FROM {BIG} WHERE qty = 1", None, "f") is not None
    finally:
        conn.close()


def test_mariadb_failed_statement_leaves_the_transaction_usable_and_explained(maria_tables: None) -> None:
    # MariaDB has no aborted-transaction state: a failed statement is undone alone.
    conn = _maria_connect(False)
    try:
        cur = conn.cursor()
        cur.execute(f"INSERT INTO {SCRATCH} (v) VALUES ('mine')")
        with pytest.raises(Exception, match="doesn't exist"):
            cur.execute("SELECT * FROM dbperf_explain_no_such_table")
        assert Explainer(UNLIMITED).explain(conn, "mysql", f"SELECT * FROM {BIG} WHERE qty = 1", None, "f")
        cur.execute(f"SELECT v FROM {SCRATCH}")
        assert cur.fetchall() == (("mine",),)
        conn.rollback()
    finally:
        conn.close()


# --- statement timeout -------------------------------------------------------------------------


@pytest.mark.parametrize("db", ["psycopg", "psycopg2"], indirect=True)
@pytest.mark.parametrize("in_transaction", [True, False])
def test_pg_explain_waiting_on_a_lock_is_cut_by_the_timeout(db: Db, in_transaction: bool) -> None:
    conn = db.connect(not in_transaction)
    if in_transaction:
        db.query(conn, f"INSERT INTO {SCRATCH} (v) VALUES ('mine')")
    holder = db.connect(False)
    db.query(holder, f"LOCK TABLE {BIG} IN ACCESS EXCLUSIVE MODE")  # planning the EXPLAIN waits for it
    explainer = Explainer(ExplainConfig(timeout_ms=100))
    try:
        assert explainer.explain(conn, "postgresql", f"SELECT * FROM {BIG} WHERE qty = 5", None, "f") is None
    finally:
        holder.rollback()
    assert explainer.stats()["failed"] == 1 and explainer.stats()["timed_out"] == 1
    assert db.in_transaction(conn) is in_transaction
    if in_transaction:
        assert db.query(conn, f"SELECT v FROM {SCRATCH}") == [("mine",)]
        conn.commit()
        assert db.query(db.other(), f"SELECT v FROM {SCRATCH}") == [("mine",)]


@pytest.mark.parametrize("in_transaction", [True, False])
def test_mariadb_explain_waiting_on_a_lock_is_cut_by_the_timeout(maria_tables: None, in_transaction: bool) -> None:
    conn = _maria_connect(autocommit=not in_transaction)
    holder = _maria_connect(True)
    explainer = Explainer(ExplainConfig(timeout_ms=100))
    try:
        if in_transaction:
            conn.cursor().execute(f"INSERT INTO {SCRATCH} (v) VALUES ('mine')")
        holder.cursor().execute(f"LOCK TABLES {BIG} WRITE")
        try:
            assert explainer.explain(conn, "mysql", f"SELECT * FROM {BIG} WHERE qty = 5", None, "f") is None
        finally:
            holder.cursor().execute("UNLOCK TABLES")
        assert explainer.stats()["failed"] == 1 and explainer.stats()["timed_out"] == 1
        assert _maria_in_transaction(conn) is in_transaction
        if in_transaction:
            cur = conn.cursor()
            cur.execute(f"SELECT v FROM {SCRATCH}")
            assert cur.fetchall() == (("mine",),)
            conn.commit()
    finally:
        holder.cursor().execute(f"DELETE FROM {SCRATCH}")
        conn.close()
        holder.close()


@pytest.mark.parametrize("db", ["psycopg", "psycopg2", "pymysql"], indirect=True)  # SQLite: no ANALYZE
@pytest.mark.parametrize("timeout_ms", [200, 0])  # 0 is no "no timeout": the smallest one is used
def test_explain_analyze_of_a_long_query_is_cut_by_the_timeout(db: Db, timeout_ms: int) -> None:
    conn = db.connect(True)  # MariaDB runs ANALYZE only outside a transaction (read-only)
    cross = f"SELECT count(*) FROM {BIG} a, {BIG} b WHERE a.qty + b.qty = {db.p}"  # 2.5e9 pairs
    explainer = Explainer(ExplainConfig(analyze=True, timeout_ms=timeout_ms))
    assert explainer.explain(conn, db.dialect, cross, (7,), "f") is None
    assert explainer.stats()["timed_out"] == 1
    assert not db.in_transaction(conn)
    assert db.query(conn, f"SELECT count(*) FROM {BIG} WHERE qty < {db.p}", (3,)) == [(2,)]


# --- EXPLAIN ANALYZE is read-only ------------------------------------------------------------


def test_pg_analyze_in_a_transaction_cannot_write(pg_tables: str) -> None:
    with psycopg.connect(pg_tables, autocommit=True) as setup:
        setup.execute(
            "CREATE OR REPLACE FUNCTION dbperf_explain_write() RETURNS int LANGUAGE sql AS "
            f"$$ INSERT INTO {SCRATCH} (v) VALUES ('by analyze') RETURNING 1 $$"
        )
        # a view hides the call from the statement: only the read-only transaction stops it
        setup.execute("CREATE OR REPLACE VIEW dbperf_explain_write_view AS SELECT dbperf_explain_write() AS x")
    conn = psycopg.connect(pg_tables)
    explainer = Explainer(ExplainConfig(analyze=True, timeout_ms=5000))  # a loaded server's 50k-row scan
    try:
        conn.execute(f"INSERT INTO {SCRATCH} (v) VALUES ('mine')")
        assert explainer.explain(conn, "postgresql", "SELECT dbperf_explain_write()", None, "f") is None
        assert explainer.stats()["skipped"] == {"side_effects": 1}  # a function not known to be safe
        assert explainer.explain(conn, "postgresql", "SELECT x FROM dbperf_explain_write_view", None, "v") is None
        assert explainer.stats()["failed"] == 1  # "cannot execute INSERT in a read-only transaction"
        assert conn.execute(f"SELECT v FROM {SCRATCH}").fetchall() == [("mine",)]
        plan = explainer.explain(conn, "postgresql", f"SELECT * FROM {BIG} WHERE qty = 7", None, "g")
        assert plan is not None and '"Actual Rows":1' in plan.text
        conn.commit()
    finally:
        conn.close()
        with psycopg.connect(pg_tables, autocommit=True) as setup:
            setup.execute(f"DELETE FROM {SCRATCH}")
            setup.execute("DROP VIEW IF EXISTS dbperf_explain_write_view")


def test_mariadb_analyze_is_read_only_outside_and_plain_explain_inside_a_transaction(maria_tables: None) -> None:
    setup = _maria_connect(True)
    with setup.cursor() as cur:
        cur.execute("DROP FUNCTION IF EXISTS dbperf_explain_write")
        cur.execute(
            "CREATE FUNCTION dbperf_explain_write() RETURNS int MODIFIES SQL DATA "
            f"BEGIN INSERT INTO {SCRATCH} (v) VALUES ('by analyze'); RETURN 1; END"
        )
        # a view hides the call from the statement: only the read-only transaction stops it
        cur.execute("CREATE OR REPLACE VIEW dbperf_explain_write_view AS SELECT dbperf_explain_write() AS x")
    explainer = Explainer(ExplainConfig(analyze=True, per_fingerprint_interval_s=0, timeout_ms=5000))
    idle, busy = _maria_connect(True), _maria_connect(False)
    try:
        assert explainer.explain(idle, "mysql", "SELECT dbperf_explain_write()", None, "e") is None
        assert explainer.stats()["skipped"] == {"side_effects": 1}  # a function not known to be safe
        assert explainer.explain(idle, "mysql", "SELECT x FROM dbperf_explain_write_view", None, "f") is None
        assert explainer.stats()["failed"] == 1  # "Cannot execute statement in a READ ONLY transaction"
        plan = explainer.explain(idle, "mysql", f"SELECT * FROM {BIG} WHERE qty = 7", None, "g")
        assert plan is not None and '"r_rows"' in plan.text  # really ANALYZE

        busy.cursor().execute(f"INSERT INTO {SCRATCH} (v) VALUES ('mine')")
        plan = explainer.explain(busy, "mysql", "SELECT x FROM dbperf_explain_write_view", None, "h")
        assert plan is not None and '"r_rows"' not in plan.text
        assert explainer.stats()["analyze_downgraded"] == 1
        with busy.cursor() as cur:
            cur.execute(f"SELECT v FROM {SCRATCH}")
            assert cur.fetchall() == (("mine",),)
        busy.rollback()
        with setup.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {SCRATCH}")
            assert cur.fetchall() == ((0,),)
    finally:
        with setup.cursor() as cur:
            cur.execute(f"DELETE FROM {SCRATCH}")
            cur.execute("DROP VIEW IF EXISTS dbperf_explain_write_view")
            cur.execute("DROP FUNCTION IF EXISTS dbperf_explain_write")
        for c in (setup, idle, busy):
            c.close()


# --- rate limits -----------------------------------------------------------------------------


def test_one_plan_per_fingerprint_per_interval(db: Db) -> None:
    clock = FakeClock()
    explainer = Explainer(ExplainConfig(per_fingerprint_interval_s=60, max_per_minute=100), clock=clock)
    conn = db.connect(False)
    sql, params = point_query(db)
    assert explainer.explain(conn, db.dialect, sql, params, "A") is not None
    assert explainer.explain(conn, db.dialect, sql, params, "B") is not None
    clock.now += 59.9
    assert explainer.explain(conn, db.dialect, sql, params, "A") is None
    clock.now += 0.1
    assert explainer.explain(conn, db.dialect, sql, params, "A") is not None
    assert explainer.stats()["explained"] == 3
    assert explainer.stats()["skipped"] == {"rate_limited": 1}


def test_at_most_max_per_minute_plans_overall(db: Db) -> None:
    clock = FakeClock()
    clock.now = 0.0
    explainer = Explainer(ExplainConfig(per_fingerprint_interval_s=0, max_per_minute=3), clock=clock)
    conn = db.connect(False)
    sql, params = point_query(db)
    results = []
    for i in range(5):
        clock.now += 1
        results.append(explainer.explain(conn, db.dialect, sql, params, f"fp{i}") is not None)
    assert results == [True, True, True, False, False]
    clock.now += 56  # now 61: the first plan (at 1) is 60 s old, the others (2, 3) are not
    assert explainer.explain(conn, db.dialect, sql, params, "fp9") is not None
    assert explainer.explain(conn, db.dialect, sql, params, "fp10") is None
    assert explainer.stats()["skipped"] == {"rate_limited": 3}


def test_rate_limit_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = gate._RateLimiter(ExplainConfig(max_per_minute=10**9), clock)
    for i in range(plan_module._MAX_FINGERPRINTS + 5):
        clock.now += 0.001
        assert limiter.allow(str(i))
    assert len(limiter._last) <= plan_module._MAX_FINGERPRINTS


# --- failures ----------------------------------------------------------------------------------


def test_vanished_temp_table_is_a_counted_failure(db: Db) -> None:
    conn = db.connect(False)
    db.begin(conn)
    temporary = "TEMPORARY" if db.dialect != "sqlite" else "TEMP"
    db.query(conn, f"CREATE {temporary} TABLE dbperf_explain_tmp (a int)")
    db.query(conn, f"INSERT INTO {SCRATCH} (v) VALUES ('mine')")
    db.query(conn, "DROP TABLE dbperf_explain_tmp")
    explainer = Explainer(UNLIMITED)
    sql = f"SELECT a FROM dbperf_explain_tmp WHERE a = {db.p}"
    assert explainer.explain(conn, db.dialect, sql, (1,), "f") is None
    assert explainer.stats()["failed"] == 1 and explainer.stats()["timed_out"] == 0
    assert db.query(conn, f"SELECT v FROM {SCRATCH}") == [("mine",)]  # the transaction is still usable
    conn.rollback()


def test_closed_connection_is_a_counted_failure(db: Db) -> None:
    conn = db.connect(False)
    conn.close()
    explainer = Explainer(UNLIMITED)
    sql, params = point_query(db)
    assert explainer.explain(conn, db.dialect, sql, params, "f") is None
    assert explainer.stats()["failed"] == 1


def test_driver_error_is_a_counted_failure_and_logs_no_values(db: Db, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="otel_dbperf")
    conn = db.connect(False)
    explainer = Explainer(UNLIMITED)
    sql = f"SELECT name FROM {BIG} WHERE name = {db.p} AND qty = {db.p}"
    assert explainer.explain(conn, db.dialect, sql, (SECRET,), "f") is None  # one parameter short
    assert (
        explainer.explain(conn, db.dialect, f"SELECT no_such_column FROM {BIG} WHERE name = {db.p}", (SECRET,), "g")
        is None
    )
    assert explainer.stats()["failed"] == 2
    assert "EXPLAIN failed" in caplog.text
    assert SECRET not in caplog.text
    db.query(conn, "SELECT 1")  # the connection is still usable


def test_unsupported_connections_and_dialect_mismatch_are_skipped(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    sql, params = point_query(db)
    assert explainer.explain(object(), db.dialect, sql, params, "f") is None
    wrong = "sqlite" if db.dialect != "sqlite" else "postgresql"
    assert explainer.explain(db.connect(False), wrong, sql, params, "f") is None
    assert explainer.stats()["skipped"] == {"unsupported": 2}


# --- parameters and sanitizing -----------------------------------------------------------------


@pytest.mark.parametrize("style", ["positional", "named"])
def test_parameters_are_bound_as_the_driver_does_and_never_shown(
    db: Db, style: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="otel_dbperf")
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    if style == "positional":
        sql = f"SELECT id FROM {BIG} WHERE name = {db.p} AND qty > {db.p}"
        params: Any = (SECRET, 12345)
    else:
        sql = f"SELECT id FROM {BIG} WHERE name = {db.named('name')} AND qty > {db.named('qty')}"
        params = {"name": SECRET, "qty": 12345}
    plan = explainer.explain(conn, db.dialect, sql, params, "f")
    assert plan is not None, explainer.stats()
    assert plan.index_hint == f"{BIG}(name, qty)" or plan.index_hint == f"{BIG}(qty, name)"
    for shown in (plan.text, plan.verdict, caplog.text):
        assert SECRET not in shown and "12345" not in shown
    assert "?" in plan.text or db.dialect == "sqlite"


def test_values_after_a_trailing_backslash_never_reach_plans_or_hints(db: Db) -> None:
    """PostgreSQL prints 'C:\\tmp\\' in a plan: a standard string whose backslash escapes nothing."""
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    sql = f"SELECT id FROM {BIG} WHERE name = {db.p} OR name = {db.p} OR qty = {db.p}"
    plan = explainer.explain(conn, db.dialect, sql, ("C:\\tmp\\", SECRET, 4242), "f")
    assert plan is not None, explainer.stats()
    for shown in (plan.text, plan.verdict, plan.index_hint):
        assert SECRET not in shown and "4242" not in shown and "tmp" not in shown
    assert plan.index_hint in ("", f"{BIG}(name, qty)", f"{BIG}(qty, name)", f"{BIG}(name)")


def test_index_hints_name_only_names_of_the_statement() -> None:
    doc = [
        {
            "Plan": {
                "Node Type": "Seq Scan",
                "Relation Name": "users",
                "Alias": "users",
                "Filter": "((name = 'C:\\tmp\\'::text) AND (dbperf_secret_col = 1))",
                "Total Cost": 10.0,
                "Plan Rows": 1,
            }
        }
    ]
    plan = verdicts._pg_plan(doc, None, ExplainConfig(), "SELECT id FROM users WHERE name = %s AND x = 1")
    assert plan.index_hint == "users(name)" and "dbperf_secret_col" not in plan.verdict


# the advisory locks of one session: other sessions of the server (another suite's) may hold theirs
_ADVISORY = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s"


@pytest.mark.parametrize("db", ["psycopg2", "psycopg"], indirect=True)
def test_multi_statement_strings_never_run_a_second_statement(db: Db) -> None:
    """psycopg2 binds on the client and sends one string: EXPLAIN must not carry a second statement."""
    explainer = Explainer(ExplainConfig(per_fingerprint_interval_s=0, max_per_minute=10_000, analyze=False))
    conn, watcher = db.connect(True), db.other()
    (pid,) = db.query(conn, "SELECT pg_backend_pid()")[0]
    smuggled = [
        ("SELECT $$x$$, 1; SELECT pg_advisory_lock(4201)", None),
        ("SELECT $$x$$; SELECT pg_advisory_lock(4202)", ()),
        ("SELECT $é$ x $é$; SELECT pg_advisory_lock(4203)", None),
        ("SELECT 1 /* a /* b */ c */; SELECT pg_advisory_lock(4204)", None),
        ("SELECT 'C:\\' ; SELECT pg_advisory_lock(4205) --'", None),
        # a bound value ending the dollar quote it was placed in (client-side substitution)
        ("SELECT $$%s$$ AS v", ("$$; SELECT pg_advisory_lock(4206); --",)),
    ]
    for sql, params in smuggled:
        assert explainer.explain(conn, "postgresql", sql, params, "f") is None, sql
    assert explainer.stats()["skipped"] == {"not_select": len(smuggled)}
    assert db.query(watcher, _ADVISORY, (pid,)) == [(0,)]
    # the control: the driver really would run the second statement
    db.query(conn, "SELECT 1; SELECT pg_advisory_lock(4200)")
    assert db.query(watcher, _ADVISORY, (pid,)) == [(1,)]
    db.query(conn, "SELECT pg_advisory_unlock_all()")


@pytest.mark.parametrize("db", ["psycopg2"], indirect=True)
def test_analyze_never_reruns_calls_that_are_not_known_to_be_safe(db: Db) -> None:
    setup = db.other()
    db.query(setup, "CREATE OR REPLACE FUNCTION dbperf_lock(k int) RETURNS int LANGUAGE sql AS "
                    "$$ SELECT pg_advisory_lock(k)::text::int + 1 $$")  # fmt: skip
    explainer = Explainer(
        ExplainConfig(per_fingerprint_interval_s=0, max_per_minute=10_000, analyze=True, timeout_ms=5000)
    )
    conn = db.connect(False)
    (pid,) = db.query(conn, "SELECT pg_backend_pid()")[0]
    conn.rollback()  # idle again, as the test has it
    try:
        calls = [
            "SELECT pg_advisory_lock(4301)",
            "SELECT dbperf_lock(4302)",
            "SELECT public.lower(name) FROM dbperf_explain_big WHERE dbperf_lock(4303) = 1",
            'SELECT "dbperf_lock"(4304)',
            "SELECT count(*) FROM dbperf_explain_big WHERE qty = dbperf_lock(4305)",
        ]
        for sql in calls:
            assert explainer.explain(conn, "postgresql", sql, None, "f") is None, sql
        assert explainer.stats()["skipped"] == {"side_effects": len(calls)}
        assert db.query(setup, _ADVISORY, (pid,)) == [(0,)]
        plan = explainer.explain(conn, "postgresql", f"SELECT lower(name), count(*) FROM {BIG} GROUP BY 1", None, "g")
        assert plan is not None and '"Actual Rows"' in plan.text  # safe built-ins: still ANALYZEd
    finally:
        conn.rollback()
        db.query(setup, "DROP FUNCTION IF EXISTS dbperf_lock(int)")


@pytest.mark.parametrize(
    ("dialect", "statement", "reason"),
    [
        ("postgresql", "SELECT $$x$$; SELECT 1", "not_select"),
        ("postgresql", "SELECT $$;$$, $a$;$a$ FROM t", None),
        ("postgresql", "SELECT 'C:\\' AS p FROM t", None),
        # a ";" outside a literal when standard_conforming_strings is off (read with it on and off)
        ("postgresql", "SELECT 'C:\\' AS p, ';' FROM t", "not_select"),
        ("mysql", "SELECT 'C:\\' AS p; SELECT 1 -- '", "not_select"),
        ("mysql", "SELECT 'a\\'; SELECT 1; -- '", "not_select"),  # read with and without backslash escapes
        ("mysql", "SELECT 1 # ; DELETE FROM t\n FROM t", None),
        ("mariadb", "SELECT a FROM t INTO OUTFILE '/tmp/x'", "not_select"),
        ("sqlite", 'SELECT ";" FROM t', None),
        ("other", "SELECT $$x$$; SELECT 1", "not_select"),
        ("other", "SELECT 1 # ; DELETE FROM t\n FROM t", "not_select"),
        ("postgresql", "SELECT * FROM t WHERE a LIKE '%s'", "not_select"),  # a client-side placeholder inside
        ("postgresql", "SELECT * FROM t WHERE a LIKE '%%s%%'", None),  # "%%" is a percent sign
    ],
)
def test_statements_are_read_by_their_dialect(dialect: str, statement: str, reason: str | None) -> None:
    assert refusal(statement, False, dialect) == reason


def test_with_analyze_only_documented_safe_functions_are_called() -> None:
    ok = "SELECT count(*), lower(a), coalesce(b, 0) FROM t JOIN u USING (id) WHERE c IN (1, 2) AND EXISTS (SELECT 1)"
    assert refusal(ok, True, "postgresql") is None
    for call in ("my_func(1)", "s.lower(a)", '"lower"(a)', "nextval('s')", "set_config('a', 'b', false)"):
        assert refusal(f"SELECT {call} FROM t", True, "postgresql") == "side_effects", call
        assert refusal(f"SELECT {call} FROM t", False, "postgresql") is None, call


@pytest.mark.parametrize("db", ["psycopg", "psycopg2"], indirect=True)
def test_pg_plan_follows_the_parameter_values(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    sql = f"SELECT id FROM {BIG} WHERE qty > %(q)s"
    selective = explainer.explain(conn, "postgresql", sql, {"q": ROWS - 10}, "f")
    broad = explainer.explain(conn, "postgresql", sql, {"q": 10}, "f")
    assert selective is not None and selective.index_hint == f"{BIG}(qty)"
    assert broad is not None and broad.index_hint == "" and broad.estimated_rows is not None
    assert broad.estimated_rows > ROWS * 0.9  # the filter keeps almost every row: no index advice,
    assert broad.verdict.startswith(f"returns est. {broad.estimated_rows} rows to the application")  # but this


# --- verdicts --------------------------------------------------------------------------------


def test_full_scan_verdict_and_it_goes_away_with_an_index(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    sql, params = point_query(db)
    plan = explainer.explain(conn, db.dialect, sql, params, "f")
    assert plan is not None
    assert plan.index_hint == f"{BIG}(name)"
    assert f"{BIG}" in plan.verdict and "an index on dbperf_explain_big(name) may help" in plan.verdict
    if db.dialect == "postgresql":
        assert plan.verdict.startswith(f"Seq Scan on {BIG} (est. {ROWS} rows) filtering on name")
        assert plan.estimated_rows == ROWS and plan.format == "json"
        json.loads(plan.text)
    elif db.dialect == "mysql":
        assert plan.verdict.startswith(f"Full scan (access_type ALL) of {BIG} (est. ")
        assert plan.estimated_rows is not None and plan.estimated_rows > ROWS * 0.9
        assert json.loads(plan.text)["query_block"]
    else:
        assert plan.text == f"SCAN {BIG}" and plan.format == "text"

    try:
        db.begin(conn)
        db.query(conn, f"CREATE INDEX dbperf_explain_name ON {BIG} (name)")
        indexed = explainer.explain(conn, db.dialect, sql, params, "f")
        assert indexed is not None
        assert (indexed.verdict, indexed.index_hint) == ("", "")
        assert "dbperf_explain_name" in indexed.text
    finally:
        conn.rollback()
        if db.dialect == "mysql":  # DDL is not transactional there
            db.query(conn, f"DROP INDEX dbperf_explain_name ON {BIG}")


@pytest.mark.parametrize("db", ["psycopg", "psycopg2"], indirect=True)
def test_pg_leading_wildcard_like_gets_trigram_advice(db: Db) -> None:
    plan = Explainer(UNLIMITED).explain(
        db.connect(False), "postgresql", f"SELECT id FROM {BIG} WHERE name LIKE %s", ("%abc%",), "f"
    )
    assert plan is not None and "leading wildcard" in plan.verdict and "trigram" in plan.verdict
    assert "abc" not in plan.text


def test_small_tables_and_joins_get_no_verdict(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    db.query(conn, f"CREATE {'TEMP' if db.dialect != 'mysql' else 'TEMPORARY'} TABLE dbperf_explain_small (a int)")
    db.query(conn, "INSERT INTO dbperf_explain_small VALUES (1), (2), (3)")
    if db.dialect == "postgresql":
        db.query(conn, "ANALYZE dbperf_explain_small")
    plan = explainer.explain(conn, db.dialect, f"SELECT a FROM dbperf_explain_small WHERE a = {db.p}", (2,), "f")
    assert plan is not None
    if db.dialect != "sqlite":  # SQLite plans carry no row estimates
        assert plan.verdict == ""
    join = f"SELECT b.name FROM dbperf_explain_small s JOIN {BIG} b ON b.id = s.a WHERE s.a = {db.p}"
    plan = explainer.explain(conn, db.dialect, join, (2,), "g")
    assert plan is not None and BIG not in plan.verdict  # the big table is read by its primary key
    conn.rollback()


def test_function_on_an_indexed_column_verdict(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    sql = f"SELECT id, qty FROM {BIG} WHERE lower(name) = {db.p}"
    try:
        db.begin(conn)
        db.query(conn, f"CREATE INDEX dbperf_explain_name ON {BIG} (name)")
        plan = explainer.explain(conn, db.dialect, sql, (SECRET,), "f")
        assert plan is not None
        assert "so the index on name cannot be used: compare the raw column name" in plan.verdict, plan.verdict
        if db.dialect == "mysql":  # MariaDB shows lower() as lcase(), which the statement does not name
            assert plan.verdict.startswith(f"Full scan (access_type ALL) of {BIG} (est. ")
            assert "applies a function to name" in plan.verdict and plan.index_hint == ""
        else:
            assert "the filter applies lower() to name" in plan.verdict
            assert plan.verdict.endswith(f"or index the expression: {BIG}(lower(name))")
            assert plan.index_hint == f"{BIG}(lower(name))"
        if db.dialect == "postgresql":
            assert plan.verdict.startswith(f"Seq Scan on {BIG} (est. {ROWS} rows): the filter applies lower()")
        for shown in (plan.text, plan.verdict, plan.index_hint):
            assert SECRET not in shown
        plain = explainer.explain(conn, db.dialect, f"SELECT id, qty FROM {BIG} WHERE name = {db.p}", ("n42",), "g")
        assert plain is not None and plain.verdict == ""  # the raw column uses the index
        assert db.in_transaction(conn) is (db.driver != "pymysql")  # MariaDB's DDL committed; the others' did not
    finally:
        conn.rollback()
        if db.dialect == "mysql":
            db.query(conn, f"DROP INDEX dbperf_explain_name ON {BIG}")


def test_function_on_a_column_without_an_index_gets_the_missing_index_verdict(db: Db) -> None:
    sql = f"SELECT id, qty FROM {BIG} WHERE lower(name) = {db.p}"
    plan = Explainer(UNLIMITED).explain(db.connect(False), db.dialect, sql, ("n42",), "f")
    assert plan is not None and "cannot be used" not in plan.verdict and "may help" in plan.verdict


def test_unfiltered_full_scan_verdict(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    plan = explainer.explain(conn, db.dialect, f"SELECT id, name FROM {BIG}", None, "f")
    assert plan is not None
    assert plan.verdict.endswith("with no filter: the query reads and returns the whole table; add a WHERE, a "
                                 "LIMIT, or paginate"), plan.verdict  # fmt: skip
    kind = {"postgresql": "Seq Scan on", "mysql": "Full scan (access_type ALL) of", "sqlite": "Full scan (SCAN) of"}
    assert plan.verdict.startswith(f"{kind[db.dialect]} {BIG}")
    if db.dialect != "sqlite":
        assert plan.estimated_rows is not None and plan.estimated_rows > ROWS * 0.9
    for bounded in (f"SELECT id, name FROM {BIG} LIMIT 10", f"SELECT count(*) FROM {BIG}"):
        plan = explainer.explain(conn, db.dialect, bounded, None, "g")
        assert plan is not None and plan.verdict == "", (bounded, plan.verdict)
    conn.rollback()


def test_sort_without_an_index_verdict(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    plan = explainer.explain(conn, db.dialect, f"SELECT id, name FROM {BIG} ORDER BY qty LIMIT {db.p}", (10,), "f")
    assert plan is not None
    assert plan.verdict.endswith(f"by qty: an index on {BIG}(qty) may serve the ORDER BY"), plan.verdict
    assert plan.index_hint == f"{BIG}(qty)"
    if db.dialect == "postgresql":
        assert plan.verdict.startswith(f"Sort of est. {ROWS} rows") and plan.estimated_rows == ROWS
    elif db.dialect == "mysql":
        assert plan.verdict.startswith("Filesort of est. ")
    else:
        assert plan.verdict.startswith("Sort in a temporary B-tree by qty")
    try:
        db.begin(conn)
        db.query(conn, f"CREATE INDEX dbperf_explain_qty ON {BIG} (qty)")
        indexed = explainer.explain(
            conn, db.dialect, f"SELECT id, name FROM {BIG} ORDER BY qty LIMIT {db.p}", (10,), "g"
        )
        assert indexed is not None and indexed.verdict == "", indexed.verdict  # the index serves the ORDER BY
    finally:
        conn.rollback()
        if db.dialect == "mysql":
            db.query(conn, f"DROP INDEX dbperf_explain_qty ON {BIG}")


@pytest.mark.parametrize("db", ["psycopg", "psycopg2", "pymysql"], indirect=True)
def test_large_result_verdict(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    plan = explainer.explain(conn, db.dialect, f"SELECT id, name FROM {BIG} WHERE id > {db.p}", (10,), "f")
    assert plan is not None and plan.estimated_rows is not None and plan.estimated_rows >= 10_000
    assert plan.verdict == (
        f"returns est. {plan.estimated_rows} rows to the application: fetch only the rows it uses "
        "(a LIMIT, keyset pagination) or aggregate in SQL"
    )
    assert plan.index_hint == ""
    small = explainer.explain(conn, db.dialect, f"SELECT id, name FROM {BIG} WHERE id > {db.p}", (ROWS - 100,), "g")
    assert small is not None and small.verdict == ""
    conn.rollback()


def test_new_verdicts_name_only_names_of_the_statement() -> None:
    """A plan whose filter or sort key holds values (as bound parameters print): never a "column" or "function"."""
    doc = [{"Plan": {"Node Type": "Seq Scan", "Relation Name": "users", "Plan Rows": 5, "Total Cost": 9.0,
                     "Filter": "(dbperf_secret_fn(dbperf_secret_col) = 'x')"}}]  # fmt: skip
    plan = verdicts._pg_plan(doc, 100_000, ExplainConfig(), "SELECT * FROM users WHERE f(a) = %s", frozenset({
        "dbperf_secret_col"}))  # fmt: skip
    assert "dbperf_secret" not in plan.verdict + plan.index_hint
    sort = [{"Plan": {"Node Type": "Limit", "Plan Rows": 10, "Plans": [{"Node Type": "Sort", "Plan Rows": 90_000,
             "Sort Key": ["(dbperf_secret_col = 'x')"], "Plans": [{"Node Type": "Seq Scan", "Relation Name": "users",
                                                                  "Plan Rows": 90_000}]}]}}]  # fmt: skip
    plan = verdicts._pg_plan(sort, None, ExplainConfig(), "SELECT * FROM users ORDER BY a = %s LIMIT 3")
    assert plan.verdict == "Sort of est. 90000 rows: an index matching the ORDER BY may avoid it"
    assert plan.index_hint == ""


# --- hostile input -----------------------------------------------------------------------------


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["Plan", "Plans", "Node Type", "Filter", "Relation Name", "Alias", "Plan Rows", "Total Cost", "x"]
                + ["query_block", "table", "table_name", "access_type", "attached_condition", "rows"]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=40,
)
scan_nodes = st.fixed_dictionaries(
    {"Node Type": st.sampled_from(["Seq Scan", "Index Scan"]), "Relation Name": st.text(max_size=20)},
    optional={"Filter": st.text(max_size=60), "Plan Rows": json_values, "Total Cost": json_values, "Alias": st.text()},
)


@settings(max_examples=300, deadline=None)
@given(doc=json_values, node=scan_nodes, rows=st.none() | st.integers())
def test_any_plan_document_reads_without_raising(doc: Any, node: dict[str, Any], rows: int | None) -> None:
    config = ExplainConfig(max_plan_chars=500)
    for candidate in (doc, [{"Plan": node}], [{"Plan": {"Plans": [node, doc]}}]):
        plan = verdicts._pg_plan(candidate, rows, config)
        assert isinstance(plan, Plan) and len(plan.text) <= 500
    maria = {"table_name": node["Relation Name"], "access_type": "ALL", "attached_condition": node.get("Filter", "")}
    for candidate in (
        doc,
        {"query_block": {"table": maria}},
        {"query_block": {"nested_loop": [doc, {"table": maria}]}},
    ):
        assert isinstance(verdicts._mariadb_plan(candidate, config), Plan)


@settings(max_examples=300, deadline=None)
@given(statement=st.text(max_size=300), details=st.lists(st.text(max_size=40), max_size=5))
def test_any_statement_and_sqlite_rows_read_without_raising(statement: str, details: list[str]) -> None:
    assert refusal(statement) in (None, "not_select", "too_long")
    rows = [(i, i - 1, 0, d) for i, d in enumerate(details)] + [(99, 98, 0, "SCAN t")]
    assert isinstance(verdicts._sqlite_plan(rows, statement, ExplainConfig()), Plan)


def test_deep_and_huge_plans_are_bounded() -> None:
    deep: Any = {"Node Type": "Seq Scan", "Relation Name": "t", "Filter": "(a = 1)"}
    for _ in range(5_000):
        deep = {"Node Type": "Nested Loop", "Plans": [deep]}
    plan = verdicts._pg_plan([{"Plan": deep}], None, ExplainConfig(max_plan_chars=2_000))
    assert len(plan.text) <= 2_000 and '"\u2026"' in plan.text  # nesting beyond the cap is cut
    wide = [{"Plan": {"Plans": [{"Node Type": "Seq Scan", "Filter": "x" * 10_000}] * 20_000}}]
    assert len(verdicts._pg_plan(wide, None, ExplainConfig()).text) <= ExplainConfig().max_plan_chars


def test_huge_and_weird_statements_never_raise(db: Db) -> None:
    explainer = Explainer(UNLIMITED)
    conn = db.connect(False)
    huge = f"SELECT name FROM {BIG} WHERE name IN (" + ", ".join(["'x'"] * 30_000) + ")"
    for statement in (huge, "SELECT", "SELECT '\x00'", "SELECT 1 FROM", "SELECT $$", "SELECT '\ud800'"):
        assert isinstance(explainer.explain(conn, db.dialect, statement, None, ""), (Plan, type(None)))
    assert explainer.explain(conn, db.dialect, b"SELECT 1", None, "f") is None  # type: ignore[arg-type]
    stats = explainer.stats()
    assert stats["skipped"]["too_long"] == 1 and stats["skipped"]["not_select"] == 1
    assert stats["explained"] + stats["failed"] == 5
    db.query(conn, "SELECT 1")


# --- SQLAlchemy ------------------------------------------------------------------------------


class Traced:
    """An engine traced by contrib's SQLAlchemy instrumentation into memory, with our listener installed."""

    def __init__(self, engine: Engine, threshold_ms: float = 0, config: ExplainConfig = UNLIMITED) -> None:
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.engine = engine
        instrument_sqlalchemy(self.provider, engine)
        self.explainer = Explainer(config)
        self.seen: list[tuple[Any, Plan, bool]] = []  # (span, plan, span still open)
        _explain.install(self.explainer, int(threshold_ms * 1_000_000), on_plan=self.on_plan)

    def on_plan(self, span: Any, plan: Plan) -> None:
        self.seen.append((span, plan, span.end_time is None))

    def spans(self) -> list[ReadableSpan]:
        return list(self.memory.get_finished_spans())

    def explain_events(self) -> list[Any]:
        return [e for s in self.spans() for e in s.events if e.name == _explain.EVENT_EXPLAIN]

    def close(self) -> None:
        _explain.uninstall()
        uninstrument_sqlalchemy()
        self.engine.dispose()


@pytest.fixture
def traced_sqlite(tmp_path: Path) -> Iterator[Traced]:
    t = Traced(create_engine(f"sqlite:///{_sqlite_file(tmp_path)}"))
    yield t
    t.close()


def test_slow_select_span_gets_the_plan_event_while_still_open(traced_sqlite: Traced) -> None:
    with traced_sqlite.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT name FROM {BIG} WHERE name = :n"), {"n": "n7"}).all()
    assert rows == [("n7",)]
    (span,) = [s for s in traced_sqlite.spans() if BIG in str(s.attributes)]
    (event,) = span.events
    assert event.name == "dbperf.explain"
    assert event.attributes is not None
    assert event.attributes["dbperf.explain.plan"] == f"SCAN {BIG}"
    assert event.attributes["dbperf.explain.format"] == "text"
    assert event.attributes["dbperf.explain.database"] == "sqlite"
    assert event.attributes["dbperf.explain.index_hint"] == f"{BIG}(name)"
    assert "an index on" in event.attributes["dbperf.explain.verdict"]
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= event.timestamp <= span.end_time
    ((seen_span, plan, was_open),) = traced_sqlite.seen
    assert was_open and seen_span.context.span_id == span.context.span_id and plan.index_hint == f"{BIG}(name)"


def test_fast_queries_writes_and_executemany_are_not_explained(tmp_path: Path) -> None:
    t = Traced(create_engine(f"sqlite:///{_sqlite_file(tmp_path)}"), threshold_ms=60_000)
    try:
        with t.engine.begin() as conn:
            conn.execute(text(f"SELECT name FROM {BIG} WHERE name = :n"), {"n": "n7"}).all()
        assert t.explain_events() == [] and t.explainer.stats()["explained"] == 0
    finally:
        t.close()
    (tmp_path / "second").mkdir()
    t = Traced(create_engine(f"sqlite:///{_sqlite_file(tmp_path / 'second')}"))
    try:
        with t.engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {SCRATCH} (v) VALUES (:v)"), [{"v": "a"}, {"v": "b"}])
            conn.execute(text(f"UPDATE {SCRATCH} SET v = 'c'"))
        assert t.explain_events() == []
        assert t.explainer.stats()["skipped"] == {"not_select": 1}  # the UPDATE; executemany never reaches it
    finally:
        t.close()


def test_install_is_idempotent_and_uninstall_removes_the_listener(traced_sqlite: Traced) -> None:
    _explain.install(traced_sqlite.explainer, 0, on_plan=traced_sqlite.on_plan)
    _explain.install(traced_sqlite.explainer, 0, on_plan=traced_sqlite.on_plan)
    with traced_sqlite.engine.connect() as conn:
        conn.execute(text(f"SELECT name FROM {BIG} WHERE qty = 1")).all()
    assert len(traced_sqlite.explain_events()) == 1
    _explain.uninstall()
    _explain.uninstall()
    with traced_sqlite.engine.connect() as conn:
        conn.execute(text(f"SELECT name FROM {BIG} WHERE qty = 2")).all()
    assert len(traced_sqlite.explain_events()) == 1


def test_engines_created_before_install_are_covered(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{_sqlite_file(tmp_path)}")
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).all()
    t = Traced(engine)
    try:
        with engine.connect() as conn:
            conn.execute(text(f"SELECT name FROM {BIG} WHERE qty = 1")).all()
        assert len(t.explain_events()) == 1
    finally:
        t.close()


def test_dbapi_instrumentation_makes_no_spans_for_our_explain(tmp_path: Path) -> None:
    from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

    path = _sqlite_file(tmp_path)
    t = Traced(create_engine(f"sqlite:///{path}"))
    SQLite3Instrumentor().instrument(tracer_provider=t.provider)
    try:
        t.engine.dispose()
        with t.engine.connect() as conn:
            assert type(conn.connection.dbapi_connection).__module__ != "sqlite3"  # contrib's proxy
            assert conn.execute(text(f"SELECT name FROM {BIG} WHERE qty = 5")).all() == [("n5",)]
        assert len(t.explain_events()) == 1
        assert not [s for s in t.spans() if "EXPLAIN" in str(s.attributes)]
    finally:
        SQLite3Instrumentor().uninstrument()
        t.close()


def _sqlalchemy_round_trip(t: Traced) -> None:
    """An uncommitted write, a slow SELECT (explained), then the user's commit."""
    with t.engine.connect() as conn:
        conn.execute(text(f"INSERT INTO {SCRATCH} (v) VALUES (:v)"), {"v": "mine"})
        rows = conn.execute(text(f"SELECT name, qty FROM {BIG} WHERE name = :n"), {"n": SECRET}).all()
        assert rows == []
        assert conn.execute(text(f"SELECT v FROM {SCRATCH}")).all() == [("mine",)]
        conn.commit()
    with t.engine.connect() as conn:
        assert conn.execute(text(f"SELECT v FROM {SCRATCH}")).all() == [("mine",)]
        conn.execute(text(f"DELETE FROM {SCRATCH}"))
        conn.commit()
    (event,) = [e for e in t.explain_events() if BIG in e.attributes["dbperf.explain.plan"]]
    assert event.attributes["dbperf.explain.index_hint"] == f"{BIG}(name)"
    assert SECRET not in event.attributes["dbperf.explain.plan"]


def test_sqlalchemy_psycopg(pg_tables: str, pg_sync_url: str) -> None:
    t = Traced(create_engine(pg_sync_url))
    try:
        _sqlalchemy_round_trip(t)
        assert t.explain_events()[0].attributes["dbperf.explain.estimated_rows"] == ROWS
    finally:
        t.close()


def test_sqlalchemy_psycopg2(pg_tables: str, pg_sync_url: str) -> None:
    t = Traced(create_engine(pg_sync_url.replace("+psycopg:", "+psycopg2:")))
    try:
        _sqlalchemy_round_trip(t)
    finally:
        t.close()


def test_sqlalchemy_pymysql(maria_tables: None) -> None:
    t = Traced(create_engine(MARIA_URL))
    try:
        _sqlalchemy_round_trip(t)
        assert t.explain_events()[0].attributes["dbperf.explain.database"] == "mysql"
    finally:
        t.close()


def test_sqlalchemy_server_side_cursor_is_skipped(pg_tables: str, pg_sync_url: str) -> None:
    t = Traced(create_engine(pg_sync_url))
    try:
        with t.engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(text(f"SELECT name FROM {BIG} WHERE qty < 4"))
            assert sorted(result.all()) == [("n1",), ("n2",), ("n3",)]
        assert t.explain_events() == []
        assert t.explainer.stats()["skipped"] == {"server_side_cursor": 1}
    finally:
        t.close()


def test_sqlalchemy_asyncpg(pg_tables: str, pg_async_url: str) -> None:
    async def run() -> None:
        engine = create_async_engine(pg_async_url)
        t = Traced(engine.sync_engine)
        try:
            async with engine.connect() as conn:
                await conn.execute(text(f"INSERT INTO {SCRATCH} (v) VALUES (:v)"), {"v": "mine"})
                rows = (await conn.execute(text(f"SELECT name FROM {BIG} WHERE name = :n"), {"n": "n9"})).all()
                assert rows == [("n9",)]
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw.is_in_transaction()
                await conn.commit()
            async with engine.connect() as conn:
                assert (await conn.execute(text(f"SELECT v FROM {SCRATCH}"))).all() == [("mine",)]
                await conn.execute(text(f"DELETE FROM {SCRATCH}"))
                await conn.commit()
            (event,) = [e for e in t.explain_events() if BIG in e.attributes["dbperf.explain.plan"]]
            assert event.attributes["dbperf.explain.index_hint"] == f"{BIG}(name)"
            assert event.attributes["dbperf.explain.estimated_rows"] == ROWS
        finally:
            _explain.uninstall()
            SQLAlchemyInstrumentor().uninstrument()
            await engine.dispose()

    asyncio.run(run())


def test_refusal_is_linear_on_hostile_statements() -> None:
    for statement in ("SELECT '" + "%" * 16_000 + "'", "SELECT " + "/*" * 8_000, "SELECT " + "$a$" * 5_000):
        assert refusal(statement, True, "postgresql") in ("not_select", None, "too_long")
    assert refusal("SELECT '" + "%" * 15_999 + "s'", False, "postgresql") == "not_select"
    assert refusal("SELECT '" + "%" * 16_000 + "s'", False, "postgresql") is None
