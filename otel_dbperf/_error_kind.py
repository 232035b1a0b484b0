"""What kind of wait a database error is: timeouts, lock waits, deadlocks, pool exhaustion.

:func:`classify` reads the *structure* of the exception, never its text: the SQLSTATE a
PostgreSQL driver attaches (psycopg ``sqlstate``, psycopg2 ``pgcode``, asyncpg ``sqlstate``),
the server error number of a MySQL/MariaDB driver (``errno``, or ``args[0]`` for PyMySQL and
mysqlclient; never its SQLSTATE, whose codes mean other things than PostgreSQL's), and
SQLAlchemy's pool ``TimeoutError``. It follows SQLAlchemy's wrapping (``.orig``) and the exception
chain (``__cause__``) a few steps.

The kinds are the values of ``dbperf.db.error.kind`` (design.md section 4):

=====================  ==============================================================
``statement_timeout``  PostgreSQL 57014 (query canceled: ``statement_timeout``),
                       MySQL 3024 (``max_execution_time``), MariaDB 1969 (``max_statement_time``)
``lock_timeout``       PostgreSQL 55P03 (lock not available: ``lock_timeout``, ``NOWAIT``),
                       MySQL/MariaDB 1205 (lock wait timeout exceeded)
``deadlock``           PostgreSQL 40P01, MySQL/MariaDB 1213
``serialization``      PostgreSQL 40001 (could not serialize access)
``pool_timeout``       SQLAlchemy's ``sqlalchemy.exc.TimeoutError`` (no connection free in time)
=====================  ==============================================================
"""

from __future__ import annotations

from typing import Any

STATEMENT_TIMEOUT = "statement_timeout"
LOCK_TIMEOUT = "lock_timeout"
DEADLOCK = "deadlock"
SERIALIZATION = "serialization"
POOL_TIMEOUT = "pool_timeout"
KINDS = (STATEMENT_TIMEOUT, LOCK_TIMEOUT, DEADLOCK, SERIALIZATION, POOL_TIMEOUT)

#: PostgreSQL SQLSTATE -> kind
SQLSTATES = {"57014": STATEMENT_TIMEOUT, "55P03": LOCK_TIMEOUT, "40P01": DEADLOCK, "40001": SERIALIZATION}
#: MySQL / MariaDB server error number -> kind
MYSQL_ERRORS = {1205: LOCK_TIMEOUT, 1213: DEADLOCK, 3024: STATEMENT_TIMEOUT, 1969: STATEMENT_TIMEOUT}
#: drivers whose exceptions carry the server error number as ``args[0]``
_ARGS_ERRNO_MODULES = ("pymysql", "MySQLdb", "aiomysql", "asyncmy", "mysql", "mariadb", "_mysql")
_MAX_DEPTH = 4  # exceptions followed through .orig / __cause__


def classify(exc: BaseException | None) -> str | None:
    """The kind of ``exc`` (one of :data:`KINDS`), or None when it is none of them."""
    seen = 0
    while exc is not None and seen < _MAX_DEPTH:
        seen += 1
        kind = _own_kind(exc)
        if kind is not None:
            return kind
        nxt = getattr(exc, "orig", None)
        if not isinstance(nxt, BaseException) or nxt is exc:
            nxt = exc.__cause__
        exc = nxt
    return None


def _own_kind(exc: BaseException) -> str | None:
    cls = type(exc)
    module = cls.__module__ or ""
    if cls.__name__ == "TimeoutError" and module == "sqlalchemy.exc":
        return POOL_TIMEOUT
    if not module.startswith(_ARGS_ERRNO_MODULES):
        for name in ("sqlstate", "pgcode"):
            code = getattr(exc, name, None)
            if isinstance(code, str):
                kind = SQLSTATES.get(code)
                if kind is not None:
                    return kind
        return None
    # A MySQL driver: the server's error number decides. Its SQLSTATE (PyMySQL sets ``sqlstate``)
    # is not PostgreSQL's: a MySQL deadlock (1213) is SQLSTATE 40001, PostgreSQL's serialization failure.
    number = getattr(exc, "errno", None)
    if not isinstance(number, int):
        args = exc.args
        number = args[0] if args and isinstance(args[0], int) else None
    return MYSQL_ERRORS.get(number) if isinstance(number, int) else None


#: the request attribute that counts each kind (on the request's root span)
REQUEST_COUNTS = {
    STATEMENT_TIMEOUT: "dbperf.db.statement_timeouts",
    LOCK_TIMEOUT: "dbperf.db.lock_timeouts",
    DEADLOCK: "dbperf.db.deadlocks",
    SERIALIZATION: "dbperf.db.serialization_failures",
    POOL_TIMEOUT: "dbperf.db.pool_timeouts",
}
#: ``listener(kind)`` for every classified failed DB span (the ``dbperf.db.errors`` counter)
listener: Any = None


def counted(kind: str, request: Any) -> None:
    """A failed DB span of ``kind`` (request thread, errors only): the request's count and the counter.

    Pool timeouts are counted where the checkout failed (:mod:`otel_dbperf._pools`), which sees them
    with or without a span around the checkout.
    """
    if kind == POOL_TIMEOUT:
        return
    if request is not None:
        request.add(REQUEST_COUNTS[kind], 1)
    callback = listener
    if callback is not None:
        callback(kind)
