"""Exact duplicate queries: the same SELECT with the same parameters, again in one request.

One class-level SQLAlchemy ``after_cursor_execute`` listener (it runs before contrib's
instance-level one, which ends the query's span: see ``explain.listener.install``) takes a keyed
digest of the query's parameters (:func:`~.params.digest`) and leaves it in that
span's ``Query`` (``_pipeline``); its request's analysis compares (statement, digest) pairs
within the request.

Parameters (and anything derived from them) never leave the process: the digest is keyed
with a random key made in this process, never exported and never logged, and the values are
not kept. It is taken only for a query of the ORM-level span inside a request (the only place
duplicates are counted), not for ``executemany`` nor for SQLAlchemy's INSERT/UPDATE/DELETE, and
not for more than :data:`~.params.MAX_PARAMETERS` parameters; the export thread then
counts SELECTs only.
"""

from __future__ import annotations

from typing import Any

from .. import _forksafe
from .._guard import internal_error
from .._pipeline.record import Query
from .._sdk_compat import CONTRIB_QUERY_SPAN
from .params import digest


class _State:
    """This module's state."""

    def __init__(self) -> None:
        self.installed: Any = None  # the listener, while it listens
        # the open_spans of the DbPerfSpanProcessor whose queries get the digest (install's records)
        self.open: Any = None
        self.lock = _forksafe.lock("duplicates.install")


_state = _State()


def _after_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    try:
        if executemany or context.isinsert or context.isupdate or context.isdelete:
            return
        # one dict lookup: the span contrib opened for the query (still open; _sdk_compat.contrib_query_span,
        # inlined) and its id (the SDK span's _context, as the processor reads it)
        span = getattr(context, CONTRIB_QUERY_SPAN, None)
        open_spans = _state.open
        if span is None or open_spans is None:
            return
        query = open_spans.get(span._context[1])  # noqa: SLF001
        if query.__class__ is Query and query.orm and query.request is not None:  # only judged within a request
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

    with _state.lock:
        _state.open = records.open_spans
        if _state.installed is None:
            event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
            _state.installed = _after_cursor_execute
    return True


def uninstall() -> None:
    with _state.lock:
        _state.open = None
        if _state.installed is not None:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            event.remove(Engine, "after_cursor_execute", _state.installed)
            _state.installed = None
