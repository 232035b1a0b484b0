"""MariaDB's and MySQL's server metrics: four statements per collection (a fifth for the blocking
sessions on MySQL 8), readable with ``PROCESS`` (docs/database.md).

Names, units and attributes are the Collector contrib ``mysql`` receiver's where it has the metric;
``dbperf.db.server.*`` where it has none (max_connections, deadlocks, the session metrics).
"""

from __future__ import annotations

from typing import Any

from .server import SESSION_METRICS, Metric, Point, rows

DIALECT = "mysql"

THREADS = Metric("mysql.threads", "updown", "1", "The state of MySQL threads")
CONNECTION_COUNT = Metric(
    "mysql.connection.count", "counter", "1", "The number of connection attempts (successful or not) to the server"
)
CONNECTION_MAX = Metric(
    "dbperf.db.server.connection.max", "gauge", "{connections}", "Configured maximum number of client connections"
)
LOCKS = Metric("mysql.locks", "counter", "1", "The number of MySQL table locks")
ROW_LOCKS = Metric("mysql.row_locks", "counter", "1", "The number of InnoDB row lock waits, and their time (ms)")
BUFFER_POOL_OPERATIONS = Metric(
    "mysql.buffer_pool.operations", "counter", "1", "The number of operations on the InnoDB buffer pool"
)
HANDLERS = Metric("mysql.handlers", "counter", "1", "The number of requests to the commit and rollback handlers")
UPTIME = Metric("mysql.uptime", "counter", "s", "The number of seconds that the server has been up")
DEADLOCKS = Metric("dbperf.db.server.deadlocks", "counter", "{deadlock}", "The number of InnoDB deadlocks")

METRICS = (
    THREADS, CONNECTION_COUNT, CONNECTION_MAX, LOCKS, ROW_LOCKS, BUFFER_POOL_OPERATIONS, HANDLERS, UPTIME, DEADLOCKS,
    *SESSION_METRICS,
)  # fmt: skip

#: status variable -> (metric, attributes)
_STATUS: dict[str, tuple[Metric, dict[str, str]]] = {
    "threads_cached": (THREADS, {"kind": "cached"}),
    "threads_connected": (THREADS, {"kind": "connected"}),
    "threads_created": (THREADS, {"kind": "created"}),
    "threads_running": (THREADS, {"kind": "running"}),
    "connections": (CONNECTION_COUNT, {}),
    "table_locks_immediate": (LOCKS, {"kind": "immediate"}),
    "table_locks_waited": (LOCKS, {"kind": "waited"}),
    "innodb_row_lock_waits": (ROW_LOCKS, {"kind": "waits"}),
    "innodb_row_lock_time": (ROW_LOCKS, {"kind": "time"}),
    "innodb_buffer_pool_read_requests": (BUFFER_POOL_OPERATIONS, {"operation": "read_requests"}),
    "innodb_buffer_pool_reads": (BUFFER_POOL_OPERATIONS, {"operation": "reads"}),
    "handler_commit": (HANDLERS, {"kind": "commit"}),
    "handler_rollback": (HANDLERS, {"kind": "rollback"}),
    "uptime": (UPTIME, {}),
    "innodb_deadlocks": (DEADLOCKS, {}),  # MariaDB; MySQL: information_schema.innodb_metrics below
}
_STATUS_SQL = "SHOW GLOBAL STATUS WHERE Variable_name IN ({})".format(", ".join(f"'{v}'" for v in _STATUS))
_DEADLOCKS_MYSQL = "SELECT count FROM information_schema.innodb_metrics WHERE name = 'lock_deadlocks'"

#: one row: max_connections and what the sessions are doing (the monitor's own left out)
_SESSIONS = """
SELECT @@max_connections,
  coalesce((SELECT max(timestampdiff(MICROSECOND, trx_started, now())) / 1e6 FROM information_schema.innodb_trx
            WHERE trx_mysql_thread_id <> connection_id()), 0),
  coalesce((SELECT max(p.time) FROM information_schema.innodb_trx t
            JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id
            WHERE p.command = 'Sleep' AND p.id <> connection_id()), 0),
  (SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT')
"""
#: sessions that others wait for: MariaDB's view, else MySQL 8's
_BLOCKING = (
    "SELECT count(DISTINCT blocking_trx_id) FROM information_schema.innodb_lock_waits",
    "SELECT count(DISTINCT blocking_engine_transaction_id) FROM performance_schema.data_lock_waits",
)


class Collector:
    """Remembers, per connection, which of the server's views exist (MariaDB or MySQL)."""

    def __init__(self) -> None:
        self._blocking: int | None = 0  # index into _BLOCKING; None: neither exists
        self.queries = 0

    def collect(self, conn: Any) -> list[Point]:
        self.queries = 0
        points: list[Point] = []
        status = {str(name).lower(): value for name, value in self._rows(conn, _STATUS_SQL)}
        for variable, (metric, attributes) in _STATUS.items():
            if variable in status:
                points.append(Point(metric.name, _number(status[variable]), attributes))
        if "innodb_deadlocks" not in status:
            found = self._rows(conn, _DEADLOCKS_MYSQL)
            if found:
                points.append(Point(DEADLOCKS.name, float(found[0][0]), {}))
        ((max_conn, xact_age, idle_age, waiting),) = self._rows(conn, _SESSIONS)
        points.append(Point(CONNECTION_MAX.name, float(max_conn), {}))
        blocking = self._blocking_sessions(conn)
        for metric, value in zip(SESSION_METRICS, (xact_age, idle_age, waiting, blocking), strict=True):
            if value is not None:
                points.append(Point(metric.name, float(value), {}))
        return points

    def _rows(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        self.queries += 1
        return rows(conn, sql)

    def _blocking_sessions(self, conn: Any) -> float | None:
        import pymysql

        while self._blocking is not None and self._blocking < len(_BLOCKING):
            try:
                ((count,),) = self._rows(conn, _BLOCKING[self._blocking])
                return float(count)
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                if code >= 2000 or isinstance(exc, pymysql.err.InterfaceError):  # the connection, not the view
                    raise
                self._blocking += 1  # no such view here (MySQL 8 / MariaDB), or no grant: try the other one
        self._blocking = None
        return None


def _number(text: Any) -> float:
    """A status value (a string): an int when it is one, so counters stay integers."""
    try:
        return int(text)
    except ValueError:
        return float(text)
