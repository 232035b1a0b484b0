"""sqlite3's connection shortcuts, traced like the cursor methods they stand for.

Checked against opentelemetry-instrumentation-dbapi and -sqlite3 0.66b1.

``sqlite3.Connection.execute``, ``executemany`` and ``executescript`` are non-standard
shortcuts: each makes a cursor, calls the cursor method of the same name and returns that
cursor. Contrib's ``TracedConnectionProxy`` forwards them to the C connection, which makes
its cursor in C, past the traced cursor: apps that use them (Flask's tutorial does) get no
DB spans. The proxy contrib makes for a ``sqlite3.Connection`` is, with :func:`install`, a
subclass that adds the three methods and nothing else: each makes the cursor as the C code
does (``sqlite3.Connection.cursor`` of the connection, past any override in a subclass; it
takes the connection's ``row_factory``), wraps it in contrib's traced cursor and calls the
method there, so the span, its attributes and the metrics are contrib's cursor tracing's
own. It returns that traced cursor. A connection class that defines a shortcut of its own
keeps it, untraced as before.

Contrib builds its connection proxy with the module function ``get_traced_connection_proxy``
(from the wrapped ``sqlite3.connect``/``sqlite3.dbapi2.connect`` and from
``instrument_connection``); :func:`install` puts a function in its place that returns our
subclass for a ``sqlite3.Connection`` and calls contrib's for anything else, so connections
of other drivers are untouched. Wrapping ``connect`` once more would not do: contrib's
``uninstrument`` unwraps one layer, which would leave its own in place.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from opentelemetry.instrumentation import dbapi
from opentelemetry.instrumentation.dbapi import TracedConnectionProxy, TracedCursorProxy

from ._guard import internal_error
from ._sdk_compat import db_api_integration_of

_Connection = sqlite3.Connection


class _SQLite3CursorProxy(TracedCursorProxy):  # type: ignore[type-arg]
    """Contrib's traced cursor, plus ``executescript`` through the same tracer."""

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self.__wrapped__
        return self._self_cursor_tracer.traced_execution(cursor, cursor.executescript, *args, **kwargs)


class SQLite3ConnectionProxy(TracedConnectionProxy):  # type: ignore[type-arg]
    """Contrib's connection proxy, plus the three sqlite3 shortcuts through its traced cursor."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return _shortcut(self, "execute", args, kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return _shortcut(self, "executemany", args, kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        return _shortcut(self, "executescript", args, kwargs)


def _shortcut(proxy: SQLite3ConnectionProxy, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    connection = proxy.__wrapped__
    if getattr(type(connection), name) is not getattr(_Connection, name):  # the class's own: as contrib leaves it
        return getattr(connection, name)(*args, **kwargs)
    cursor = _Connection.cursor(connection)  # what the C shortcut does; its errors are the app's
    traced = _traced(cursor, proxy)
    if traced is None:  # internal error: the shortcut, untraced
        getattr(cursor, name)(*args, **kwargs)
        return cursor
    try:
        getattr(traced, name)(*args, **kwargs)
    except BaseException:
        _release(cursor)
        raise
    return traced


def _release(cursor: sqlite3.Cursor) -> None:
    """After a failed shortcut, release its cursor's statement now, as the C shortcut does.

    The app never sees that cursor; in C it is freed at once, and with it its statement. Here
    contrib's ``traced_execution`` keeps the exception in a local, a cycle (exception, traceback,
    frame) that keeps the cursor until the garbage collector runs; with its statement unfinalized,
    the app's ``close()`` would leave the connection open in its transaction, holding the lock
    ("database is locked" for the next writer). Closing the cursor releases the statement.
    """
    try:
        cursor.close()
    except sqlite3.Error:
        pass  # its connection is closed: nothing is held
    except Exception as error:  # noqa: BLE001 - the app's exception is raised all the same
        internal_error("sqlite3 shortcut", error, "that failed call's cursor is released by the garbage collector")


def _traced(cursor: sqlite3.Cursor, proxy: SQLite3ConnectionProxy) -> _SQLite3CursorProxy | None:
    try:
        integration = db_api_integration_of(proxy)
        if integration is None:
            raise ValueError("contrib's connection proxy has no DB-API integration")
        return _SQLite3CursorProxy(cursor, integration)
    except Exception as exc:  # noqa: BLE001 - the app's query runs all the same
        internal_error("sqlite3 shortcut", exc, "that sqlite3 connection shortcut call is untraced")
        return None


_contrib_proxy = dbapi.get_traced_connection_proxy


def _connection_proxy(connection: Any, db_api_integration: Any, *args: Any, **kwargs: Any) -> Any:
    """Contrib's ``get_traced_connection_proxy``; our subclass for a ``sqlite3.Connection``."""
    try:
        if db_api_integration is not None and issubclass(type(connection), _Connection):
            return SQLite3ConnectionProxy(connection, db_api_integration)
    except Exception as exc:  # noqa: BLE001 - contrib's proxy instead
        internal_error("sqlite3 connection", exc, "that connection's execute/executemany/executescript are untraced")
    return _contrib_proxy(connection, db_api_integration, *args, **kwargs)


def install() -> None:
    """Contrib's DB-API tracing makes :class:`SQLite3ConnectionProxy` for sqlite3 connections (idempotent)."""
    if dbapi.get_traced_connection_proxy is not _connection_proxy:
        if dbapi.get_traced_connection_proxy is not _contrib_proxy:
            raise RuntimeError("opentelemetry.instrumentation.dbapi.get_traced_connection_proxy is already replaced")
        dbapi.get_traced_connection_proxy = _connection_proxy


def uninstall() -> None:
    """Contrib's own proxy again, for connections made from now on."""
    if dbapi.get_traced_connection_proxy is _connection_proxy:
        dbapi.get_traced_connection_proxy = _contrib_proxy
