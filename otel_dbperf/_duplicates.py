"""Exact duplicate queries: the same SELECT with the same parameters, again in one request.

One class-level SQLAlchemy ``after_cursor_execute`` listener (it runs before contrib's
instance-level one, which ends the query's span: see ``_explain.install``) takes a keyed
digest of the query's parameters (:func:`~._pipeline.params.digest`) and leaves it in that
span's ``Query`` (``_pipeline``); its request's analysis compares (statement, digest) pairs
within the request.

Parameters (and anything derived from them) never leave the process: the digest is keyed
with a random key made in this process, never exported and never logged, and the values are
not kept. It is taken only for a query of the ORM-level span inside a request (the only place
duplicates are counted), not for ``executemany`` nor for SQLAlchemy's INSERT/UPDATE/DELETE, and
not for more than :data:`~._pipeline.params.MAX_PARAMETERS` parameters; the export thread then
counts SELECTs only.
"""

from __future__ import annotations

from typing import Any

from . import _forksafe
from ._guard import internal_error
from ._pipeline.params import digest
from ._sdk_compat import contrib_query_span

_installed: Any = None
_records: Any = None  # the DbPerfSpanProcessor whose queries get the digest (install's records)
_lock = _forksafe.lock("duplicates.install")


def _after_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    try:
        if executemany or context.isinsert or context.isupdate or context.isdelete:
            return
        records = _records
        if records is None:
            return
        query = records.open_query(contrib_query_span(context))  # its span is still open
        if query is not None and query.orm and query.request is not None:  # only judged within a request
            query.params = digest(parameters)
    except Exception as exc:  # noqa: BLE001 - never into the application
        internal_error("duplicates.after_cursor_execute", exc)


def install(records: Any) -> bool:
    """Listen on every SQLAlchemy engine (idempotent); the digests go into the open queries of
    ``records`` (a ``DbPerfSpanProcessor``; installing again hands over another one). False when
    SQLAlchemy is not imported.

    Never imports SQLAlchemy itself: the instrumentation has imported it by the time
    ``opentelemetry-instrument`` calls this.
    """
    import sys

    if "sqlalchemy" not in sys.modules:
        return False
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    global _installed, _records
    with _lock:
        _records = records
        if _installed is None:
            event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
            _installed = _after_cursor_execute
    return True


def uninstall() -> None:
    global _installed, _records
    with _lock:
        _records = None
        if _installed is not None:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            event.remove(Engine, "after_cursor_execute", _installed)
            _installed = None
