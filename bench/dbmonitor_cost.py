"""What ``otel-dbperf dbmonitor``'s metric collection costs the database server.

Runs the monitor's own collectors (``otel_dbperf/dbmonitor/postgres.py`` and ``mysql.py``) against
real servers and reports, per collection: the statements issued, and for each statement its
server-side execution time (PostgreSQL: ``EXPLAIN (ANALYZE)``'s planning plus execution time of
the very statement; MariaDB: ``SHOW PROFILES``, the server's own timing of each statement) and
the round trip the monitor sees (loopback, so close to the server's time plus the protocol).
``--sessions N`` opens N more client sessions first (half of them idle in a transaction) and
``--tables N`` makes N more tables in the monitored database, since the session and table views
grow with both. Usage::

    .venv/bin/python bench/dbmonitor_cost.py                  # 200 rounds, the servers as they are
    .venv/bin/python bench/dbmonitor_cost.py --sessions 50 --tables 200
    .venv/bin/python bench/dbmonitor_cost.py --pg postgresql://postgres@127.0.0.1:5432/test \\
        --mysql mysql://root@127.0.0.1:3306/test

Figures and what they mean: docs/database.md, "The cost on the database".
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from otel_dbperf.dbmonitor import mysql, postgres
from otel_dbperf.dbmonitor.loop import parse_target


class Timed:
    """A DB-API connection whose cursors time every statement (the round trip)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.times: list[tuple[str, float]] = []

    def cursor(self) -> Any:
        outer = self
        cur = self.conn.cursor()

        class Cursor:
            def execute(self, sql: str, *args: Any) -> Any:
                start = time.perf_counter()
                result = cur.execute(sql, *args)
                self.rows = cur.fetchall()
                outer.times.append((sql, time.perf_counter() - start))
                return result

            def fetchall(self) -> Any:
                return self.rows

            def close(self) -> None:
                cur.close()

        return Cursor()


def _label(sql: str) -> str:
    return " ".join(sql.split())[:60]


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 3),
    }


def bench_postgres(dsn: str, rounds: int, sessions: int, tables: int) -> dict[str, Any]:
    import psycopg

    target = parse_target(dsn)
    extra = []
    admin = target.connect()
    for i in range(tables):
        admin.execute(f"CREATE TABLE IF NOT EXISTS dbmon_bench_{i} (id int PRIMARY KEY, v int)")
    for i in range(sessions):
        conn = psycopg.connect(dsn)
        if i % 2:
            conn.execute("SELECT 1")  # idle in transaction
        extra.append(conn)
    timed = Timed(target.connect())
    collector = postgres.Collector()
    per_collection: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        collector.collect(timed)
        per_collection.append(time.perf_counter() - start)
    server: dict[str, list[float]] = {}
    for sql in postgres.QUERIES:
        for _ in range(max(rounds // 10, 5)):
            ((plan,),) = admin.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").fetchall()
            server.setdefault(_label(sql), []).append((plan[0]["Planning Time"] + plan[0]["Execution Time"]) / 1000)
    for conn in extra:
        conn.close()
    for i in range(tables):
        admin.execute(f"DROP TABLE IF EXISTS dbmon_bench_{i}")
    admin.close()
    return _report("postgresql", collector.queries, timed.times, per_collection, server)


def bench_mysql(dsn: str, rounds: int, sessions: int, tables: int) -> dict[str, Any]:
    import pymysql

    target = parse_target(dsn)
    extra = []
    admin = target.connect()
    with admin.cursor() as cur:
        for i in range(tables):
            cur.execute(f"CREATE TABLE IF NOT EXISTS dbmon_bench_{i} (id int PRIMARY KEY, v int) ENGINE=InnoDB")
    for i in range(sessions):
        conn = target.connect()
        if i % 2:
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SELECT count(*) FROM information_schema.tables WHERE 0")  # no rows, a snapshot
        extra.append(conn)
    raw = target.connect()
    with raw.cursor() as cur:
        cur.execute("SET profiling = 1, profiling_history_size = 100")
    timed = Timed(raw)
    collector = mysql.Collector()
    per_collection: list[float] = []
    server: dict[str, list[float]] = {}
    queries = 0
    for _ in range(rounds):
        start = time.perf_counter()
        collector.collect(timed)
        per_collection.append(time.perf_counter() - start)
        queries = collector.queries
        with raw.cursor() as cur:
            cur.execute("SHOW PROFILES")
            for _id, duration, text in cur.fetchall()[-queries:]:
                server.setdefault(_label(text), []).append(float(duration))
            cur.execute("SET profiling = 0")
            cur.execute("SET profiling = 1")  # a fresh history each round
    for conn in extra:
        conn.close()
    with admin.cursor() as cur:
        for i in range(tables):
            cur.execute(f"DROP TABLE IF EXISTS dbmon_bench_{i}")
    admin.close()
    del pymysql
    return _report("mysql", queries, timed.times, per_collection, server)


def _report(
    dialect: str,
    queries: int,
    times: list[tuple[str, float]],
    per_collection: list[float],
    server: dict[str, list[float]],
) -> dict[str, Any]:
    round_trip: dict[str, list[float]] = {}
    for sql, seconds in times:
        round_trip.setdefault(_label(sql), []).append(seconds)
    return {
        "dialect": dialect,
        "statements_per_collection": queries,
        "collection_round_trip": _summary(per_collection),
        "statements": {
            label: {"round_trip": _summary(values), "server": _summary(server[label]) if label in server else None}
            for label, values in round_trip.items()
        },
        "server_total_median_ms": round(sum(statistics.median(v) for v in server.values()) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/test")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=0)
    parser.add_argument("--tables", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="the full figures as JSON")
    args = parser.parse_args()
    print(f"{args.rounds} collections; {args.sessions} more sessions, {args.tables} more tables")
    for result in (
        bench_postgres(args.pg, args.rounds, args.sessions, args.tables),
        bench_mysql(args.mysql, args.rounds, args.sessions, args.tables),
    ):
        if args.json:
            print(json.dumps(result, indent=1))
            continue
        total = result["collection_round_trip"]
        print(
            f"\n{result['dialect']}: {result['statements_per_collection']} statements per collection; "
            f"server time {result['server_total_median_ms']} ms (sum of the statements' medians); "
            f"round trip of a collection median {total['median_ms']} ms, p95 {total['p95_ms']} ms"
        )
        print(f"  {'statement':62} {'server med/p95 ms':>18} {'round trip med/p95 ms':>22}")
        for label, figures in result["statements"].items():
            srv = figures["server"] or {"median_ms": float("nan"), "p95_ms": float("nan")}
            rt = figures["round_trip"]
            print(
                f"  {label:62} {srv['median_ms']:>8.3f} {srv['p95_ms']:>8.3f} "
                f"{rt['median_ms']:>11.3f} {rt['p95_ms']:>9.3f}"
            )


if __name__ == "__main__":
    main()
