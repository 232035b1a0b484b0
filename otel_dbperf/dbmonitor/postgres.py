"""PostgreSQL's server metrics: five statements per collection, on the statistics views that the
``pg_monitor`` role may read (docs/database.md).

Names, units and attributes are the Collector contrib ``postgresql`` receiver's where it has the
metric (``db.namespace`` is the database); ``dbperf.db.server.*`` where it has none.
"""

from __future__ import annotations

from typing import Any

from .server import SESSION_METRICS, Metric, Point, rows

DIALECT = "postgresql"

BACKENDS = Metric("postgresql.backends", "updown", "1", "The number of backends (connections) of each database")
CONNECTION_MAX = Metric(
    "postgresql.connection.max", "gauge", "{connections}", "Configured maximum number of client connections allowed"
)
COMMITS = Metric("postgresql.commits", "counter", "1", "The number of commits")
ROLLBACKS = Metric("postgresql.rollbacks", "counter", "1", "The number of rollbacks")
DEADLOCKS = Metric("postgresql.deadlocks", "counter", "{deadlock}", "The number of deadlocks")
BLKS_HIT = Metric(
    "postgresql.blks_hit", "counter", "{blks_hit}", "Number of times disk blocks were found already in the buffer cache"
)
BLKS_READ = Metric("postgresql.blks_read", "counter", "{blks_read}", "Number of disk blocks read in this database")
DB_SIZE = Metric("postgresql.db_size", "updown", "By", "The database disk usage")
ROWS = Metric(
    "postgresql.rows", "updown", "1", "Live and dead rows of the tables of the monitored database (the 100 most dead)"
)
LOCKS = Metric("postgresql.database.locks", "gauge", "{lock}", "The number of locks held or awaited")
WAL_LAG = Metric(
    "postgresql.wal.lag", "gauge", "s", "Time for a standby to write, flush or replay recent WAL (per standby)"
)
DATA_DELAY = Metric(
    "postgresql.replication.data_delay", "gauge", "By", "WAL not yet replayed by a standby (per standby)"
)

METRICS = (
    BACKENDS, CONNECTION_MAX, COMMITS, ROLLBACKS, DEADLOCKS, BLKS_HIT, BLKS_READ, DB_SIZE, ROWS, LOCKS, WAL_LAG,
    DATA_DELAY, *SESSION_METRICS,
)  # fmt: skip

#: one row for the whole server: max_connections and what the sessions are doing (the monitor's
#: own session is left out: its statement is always running)
_SERVER = """
SELECT current_setting('max_connections')::int,
  coalesce((SELECT extract(epoch FROM max(now() - xact_start))::float8 FROM pg_stat_activity
            WHERE xact_start IS NOT NULL AND backend_type = 'client backend' AND pid <> pg_backend_pid()), 0),
  coalesce((SELECT extract(epoch FROM max(now() - state_change))::float8 FROM pg_stat_activity
            WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')), 0),
  (SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()),
  (SELECT count(DISTINCT blocker) FROM pg_stat_activity, unnest(pg_blocking_pids(pid)) AS blocker
     WHERE wait_event_type = 'Lock')
"""
_DATABASES = """
SELECT d.datname, s.numbackends, s.xact_commit, s.xact_rollback, s.deadlocks, s.blks_hit, s.blks_read,
       pg_database_size(d.oid)
FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid
WHERE d.datallowconn AND NOT d.datistemplate
"""
_LOCKS = """
SELECT l.mode, l.locktype, coalesce(c.relname, ''), count(*)
FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation
WHERE l.pid IS DISTINCT FROM pg_backend_pid()
GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 200
"""
_TABLES = """
SELECT current_database(), schemaname || '.' || relname, n_live_tup, n_dead_tup
FROM pg_stat_user_tables ORDER BY n_dead_tup DESC, relid LIMIT 100
"""
_REPLICATION = """
SELECT coalesce(host(client_addr), 'unix'), extract(epoch FROM write_lag)::float8,
       extract(epoch FROM flush_lag)::float8, extract(epoch FROM replay_lag)::float8,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 END
FROM pg_stat_replication
"""
QUERIES = (_SERVER, _DATABASES, _LOCKS, _TABLES, _REPLICATION)


def collect(conn: Any) -> list[Point]:
    """One collection: ``len(QUERIES)`` statements; a database error propagates (the loop handles it)."""
    points: list[Point] = []
    add = points.append
    ((max_conn, xact_age, idle_age, waiting, blocking),) = rows(conn, _SERVER)
    add(Point(CONNECTION_MAX.name, max_conn, {}))
    for metric, value in zip(SESSION_METRICS, (xact_age, idle_age, waiting, blocking), strict=True):
        add(Point(metric.name, value, {}))
    for name, backends, commits, rollbacks, deadlocks, hit, read, size in rows(conn, _DATABASES):
        db = {"db.namespace": name}
        for metric, value in (
            (BACKENDS, backends), (COMMITS, commits), (ROLLBACKS, rollbacks), (DEADLOCKS, deadlocks),
            (BLKS_HIT, hit), (BLKS_READ, read), (DB_SIZE, size),
        ):  # fmt: skip
            add(Point(metric.name, value, db))
    for mode, locktype, relation, count in rows(conn, _LOCKS):
        add(Point(LOCKS.name, count, {"mode": mode, "lock_type": locktype, "relation": relation}))
    for database, table, live, dead in rows(conn, _TABLES):
        where = {"db.namespace": database, "db.collection.name": table}
        add(Point(ROWS.name, live, {**where, "state": "live"}))
        add(Point(ROWS.name, dead, {**where, "state": "dead"}))
    for client, write, flush, replay, delay in rows(conn, _REPLICATION):
        for operation, lag in (("write", write), ("flush", flush), ("replay", replay)):
            if lag is not None:
                add(Point(WAL_LAG.name, lag, {"operation": operation, "replication_client": client}))
        if delay is not None:
            add(Point(DATA_DELAY.name, delay, {"replication_client": client}))
    return points


class Collector:
    """The same face as ``mysql.Collector``: ``collect`` and the queries of the last collection."""

    queries = len(QUERIES)

    def collect(self, conn: Any) -> list[Point]:
        return collect(conn)
