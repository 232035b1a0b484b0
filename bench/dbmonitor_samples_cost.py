"""What the database monitor's samples and statement statistics cost the database, per call.

With a number of busy sessions on the server (idle in a transaction holding a row lock, waiting on it,
running ``pg_sleep`` / ``SLEEP``), calls ``emit_samples`` and ``emit_statements`` on one autocommit
connection as the dbmonitor loop does, and prints per call: the queries it sent, its wall time at the
client (median and max, loopback), and the server's own execution time of those queries (PostgreSQL:
pg_stat_statements' ``mean_exec_time`` of them; MariaDB: performance_schema's digest timer). Every
figure is printed, none is judged.

    python bench/dbmonitor_cost.py [--sessions 20] [--calls 100]

Needs PostgreSQL (pg_stat_statements preloaded) and MariaDB (performance_schema on) on 127.0.0.1, as
scripts/test sets them up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pymysql
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from otel_dbperf.dbmonitor.samples import emit_samples
from otel_dbperf.dbmonitor.statements import emit_statements

PG_DB = "dbperf_bench_cost"


def _logger() -> tuple[Any, InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider.get_logger("bench"), exporter


def _timed(fn: Callable[[], int], calls: int) -> tuple[list[float], int]:
    times, records = [], 0
    for _ in range(calls):
        start = time.perf_counter()
        records += fn()
        times.append((time.perf_counter() - start) * 1000)
    return times, records


def _line(what: str, times: list[float], records: int, queries: float, server_ms: float) -> str:
    return (
        f"{what:<34} {queries:>5.1f} queries/call  client median {statistics.median(times):7.2f} ms"
        f"  max {max(times):7.2f} ms  server {server_ms:7.3f} ms/call  {records / len(times):6.1f} records/call"
    )


def postgres(sessions: int, calls: int) -> None:
    admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {PG_DB}")

    def connect() -> Any:
        return psycopg.connect(host="127.0.0.1", user="postgres", dbname=PG_DB, autocommit=True)

    setup = connect()
    setup.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    setup.execute("CREATE TABLE cost_rows (id int PRIMARY KEY, n int)")
    setup.execute("INSERT INTO cost_rows SELECT g, 0 FROM generate_series(1, 1000) g")
    for i in range(300):  # a pg_stat_statements with some hundreds of statements in it
        setup.execute(f"SELECT n, {i} AS c{i} FROM cost_rows WHERE id = %s", [i])
    holders = []
    for i in range(sessions):  # idle in transaction, each holding a row lock
        c = connect()
        c.execute("BEGIN")
        c.execute("SELECT n FROM cost_rows WHERE id = %s FOR UPDATE", [i + 1])
        holders.append(c)

    def quietly(c: Any, *args: Any) -> None:
        try:
            c.execute(*args)
        except psycopg.errors.QueryCanceled:  # ended by the clean-up
            pass

    waiters = []
    for i in range(sessions // 2):  # waiting on those locks
        c = connect()
        t = threading.Thread(target=quietly, args=(c, "UPDATE cost_rows SET n = n + 1 WHERE id = %s", [i + 1]))
        t.start()
        waiters.append((c, t))
    sleepers = []
    for _ in range(sessions // 2):  # running
        c = connect()
        t = threading.Thread(target=quietly, args=(c, "SELECT pg_sleep(600)"))
        t.start()
        sleepers.append((c, t))
    time.sleep(1)
    monitor = connect()
    logger, _ = _logger()

    def own() -> dict[str, tuple[int, float]]:
        rows = setup.execute(
            "SELECT query, calls, total_exec_time FROM pg_stat_statements WHERE dbid = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) AND "
            "(query LIKE '%FROM pg_stat_activity a%' OR query LIKE '%s.temp_blks_written%' "
            "OR query LIKE '%queryid = ANY%')"
        ).fetchall()
        return {q: (int(c), float(t)) for q, c, t in rows}

    print(f"PostgreSQL: {len(holders)} sessions idle in transaction, {len(waiters)} waiting on a lock, "
          f"{len(sleepers)} running; pg_stat_statements rows: "
          f"{setup.execute('SELECT count(*) FROM pg_stat_statements').fetchone()[0]}")  # fmt: skip
    for what, fn, n in (
        ("emit_samples", lambda: emit_samples(monitor, "postgresql", logger), calls),
        ("emit_statements", lambda: emit_statements(monitor, "postgresql", logger), max(2, calls // 10)),
    ):
        before = own()
        times, records = _timed(fn, n)
        after = own()
        queries = sum(c - before.get(q, (0, 0.0))[0] for q, (c, _) in after.items())
        server = sum(t - before.get(q, (0, 0.0))[1] for q, (_, t) in after.items())
        print(_line(f"  {what}", times, records, queries / n, server / n))
    for c in holders:
        c.close()
    for c, t in waiters + sleepers:
        admin.execute("SELECT pg_cancel_backend(%s)", [c.info.backend_pid])
        t.join(30)
        c.close()
    for c in (monitor, setup):
        c.close()
    admin.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
    admin.close()


def mariadb(sessions: int, calls: int) -> None:
    def connect() -> Any:
        return pymysql.connect(host="127.0.0.1", user="root", password="", database="test", autocommit=True)

    setup = connect()
    with setup.cursor() as cur:
        cur.execute("SELECT @@performance_schema")
        if not cur.fetchone()[0]:
            print("MariaDB: performance_schema is off; statement digests not measured")
        cur.execute("DROP TABLE IF EXISTS cost_rows")
        cur.execute("CREATE TABLE cost_rows (id int PRIMARY KEY, n int) ENGINE=InnoDB")
        cur.execute("INSERT INTO cost_rows SELECT seq, 0 FROM seq_1_to_1000")
    holders = []
    for i in range(sessions):
        c = connect()
        with c.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT n FROM cost_rows WHERE id = %s FOR UPDATE", [i + 1])
        holders.append(c)
    waiters = []
    for i in range(sessions // 2):
        c = connect()
        t = threading.Thread(target=c.cursor().execute, args=("UPDATE cost_rows SET n = n + 1 WHERE id = %s", [i + 1]))
        t.start()
        waiters.append((c, t))
    time.sleep(1)
    monitor = connect()
    logger, _ = _logger()

    def own() -> dict[str, tuple[int, float]]:
        with setup.cursor() as cur:
            cur.execute(
                "SELECT CONCAT(IFNULL(SCHEMA_NAME, ''), ':', DIGEST), COUNT_STAR, SUM_TIMER_WAIT / 1e9 FROM "
                "performance_schema.events_statements_summary_by_digest WHERE SCHEMA_NAME = 'test' AND "
                "(DIGEST_TEXT LIKE '%TIME_MS%' OR DIGEST_TEXT LIKE '%SUM_CREATED_TMP_DISK_TABLES%')"
            )
            return {q: (int(c), float(t)) for q, c, t in cur.fetchall()}

    print(f"MariaDB: {len(holders)} connections in a transaction holding a row lock, {len(waiters)} waiting on one")
    for what, fn, n in (
        ("emit_samples", lambda: emit_samples(monitor, "mysql", logger), calls),
        ("emit_statements", lambda: emit_statements(monitor, "mysql", logger), max(2, calls // 10)),
    ):
        before = own()
        times, records = _timed(fn, n)
        after = own()
        queries = sum(c - before.get(q, (0, 0.0))[0] for q, (c, _) in after.items())
        server = sum(t - before.get(q, (0, 0.0))[1] for q, (_, t) in after.items())
        print(_line(f"  {what}", times, records, queries / n, server / n))
    for c in holders:
        c.close()
    for c, t in waiters:
        t.join(60)  # the lock is gone with its holder
        c.close()
    with setup.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS cost_rows")
    monitor.close()
    setup.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions holding a transaction open")
    parser.add_argument("--calls", type=int, default=100, help="emit_samples calls (emit_statements: a tenth)")
    args = parser.parse_args()
    postgres(args.sessions, args.calls)
    mariadb(args.sessions, args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
