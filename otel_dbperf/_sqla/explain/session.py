"""Driver sessions: the user's connection as a savepoint or a short transaction of ours, rolled back,
with a statement timeout (DB-API drivers and asyncpg).
"""

from __future__ import annotations

from typing import Any

from .plan import ExplainConfig

_SAVEPOINT = "dbperf_explain"
_TIMEOUT_SQLSTATE = "57014"  # PostgreSQL query_canceled (statement_timeout)
_MARIADB_TIMEOUT = 1969  # ER_STATEMENT_TIMEOUT


class _Session:
    """The raw DB-API connection, driven without tracing and with its own cursors."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def implicit_begin(self) -> bool:
        """Whether the driver BEGINs on its own before our first statement (PEP 249 non-autocommit)."""
        return not self.conn.autocommit

    def run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        try:
            if params is None:
                cur.execute(sql)
            else:
                cur.execute(sql, params)
            return [tuple(row) for row in cur.fetchall()] if cur.description else []
        finally:
            cur.close()

    def rollback(self) -> None:
        self.conn.rollback()  # through the driver, so that its own transaction bookkeeping agrees

    def pg_status(self) -> str:
        """ "idle", "in_transaction", "failed", "busy" (a query or pipeline in progress) or "unknown"."""
        if getattr(self.conn, "_pipeline", None) is not None:  # psycopg 3 pipeline mode queues statements
            return "busy"
        try:
            code = int(self.conn.info.transaction_status)
        except Exception:  # noqa: BLE001 - psycopg2 raises on a closed connection
            return "unknown"
        # libpq's PQTRANS_*: 0 idle, 1 active, 2 in transaction, 3 in error, 4 unknown (bad connection)
        return {0: "idle", 1: "busy", 2: "in_transaction", 3: "failed"}.get(code, "unknown")


class _AsyncpgSession(_Session):
    """asyncpg under SQLAlchemy's adapter: awaited from SQLAlchemy's greenlet, on the raw connection
    (the adapter's cursors would fill its prepared-statement cache with our statements)."""

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter.driver_connection)

    def implicit_begin(self) -> bool:
        return False

    def run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        from sqlalchemy.util import await_only

        rows = await_only(self.conn.fetch(sql, *(params or ())))
        return [tuple(row) for row in rows]

    def pg_status(self) -> str:
        # asyncpg cannot tell a failed transaction from a live one: in a failed one our SAVEPOINT
        # fails (counted as failed_transaction) and leaves it as it was.
        return "in_transaction" if self.conn.is_in_transaction() else "idle"


def _session(dbapi_connection: Any) -> tuple[str, _Session] | None:
    """(driver family, session) for a supported driver, else None."""
    conn = getattr(dbapi_connection, "__wrapped__", dbapi_connection)  # contrib's sqlite3 proxy
    module = type(conn).__module__.partition(".")[0]
    if module in ("psycopg", "psycopg2") and not type(conn).__name__.startswith("Async"):
        return "postgresql", _Session(conn)
    if module == "pymysql":
        return ("mariadb" if "MariaDB" in str(getattr(conn, "server_version", "")) else "mysql"), _Session(conn)
    if module == "sqlite3":
        return "sqlite", _Session(conn)
    driver = getattr(conn, "driver_connection", None)
    if module == "sqlalchemy" and type(driver).__module__.partition(".")[0] == "asyncpg":
        return "postgresql", _AsyncpgSession(conn)
    return None


def _timeout_ms(config: ExplainConfig) -> int:
    return max(1, int(config.timeout_ms))  # 0 would mean no timeout at all in both databases


def _is_timeout(exc: BaseException) -> bool:
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return code == _TIMEOUT_SQLSTATE or bool(exc.args) and exc.args[0] == _MARIADB_TIMEOUT


def _is_failed_transaction(exc: BaseException) -> bool:
    return (getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)) == "25P02"
