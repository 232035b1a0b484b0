"""Exact duplicate queries: the same SELECT with the same parameters, again in one request.

One class-level SQLAlchemy ``after_cursor_execute`` listener (it runs before contrib's
instance-level one, which ends the query's span: see ``_explain.install``) takes a
digest of the query's parameters and leaves it in that span's ``Query`` (``_pipeline``);
its request's analysis compares (statement, digest) pairs within the request.

The digest is a BLAKE2b keyed with a random key made in this process, never exported
and never logged: parameters (and anything derived from them) never leave the process,
and a digest cannot be tested against guessed values without the key. It is taken only
for a query of the ORM-level span inside a request (the only place duplicates are
counted), not for ``executemany`` nor for SQLAlchemy's INSERT/UPDATE/DELETE, and not
for more than :data:`MAX_PARAMETERS` parameters; the export thread then counts SELECTs only.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

from ._guard import internal_error
from ._pipeline.processor import open_query
from ._sdk_compat import contrib_query_span

MAX_PARAMETERS = 64  # more parameters than this: not judged (the digest would cost too much)
_KEYED = hashlib.blake2b(key=os.urandom(32), digest_size=16)  # copied per digest: the key is set up once
_NONE = b""  # the digest of "no parameters" (the statement text alone decides)
_installed: Any = None
_lock = threading.Lock()


def digest(parameters: Any) -> bytes | None:
    """A keyed digest of a query's parameters (equal parameters, equal digests), or None when not taken."""
    if not parameters:
        return _NONE
    try:
        if len(parameters) > MAX_PARAMETERS:
            return None
        text = repr(parameters)  # DB-API values by now (bind processors have run): ints, strs, dates, ...
    except Exception:  # noqa: BLE001 - a value that cannot be shown: no duplicate judgement
        return None
    h = _KEYED.copy()
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


def _after_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    try:
        if executemany or context.isinsert or context.isupdate or context.isdelete:
            return
        span = contrib_query_span(context)  # still open
        if span is None:
            return
        query = open_query(span)
        if query is not None and query.orm and query.request is not None:  # only judged within a request
            query.params = digest(parameters)
    except Exception as exc:  # noqa: BLE001 - never into the application
        internal_error("duplicates.after_cursor_execute", exc)


def install() -> bool:
    """Listen on every SQLAlchemy engine (idempotent); False when SQLAlchemy is not imported.

    Never imports SQLAlchemy itself: the instrumentation has imported it by the time
    ``opentelemetry-instrument`` calls this.
    """
    import sys

    if "sqlalchemy" not in sys.modules:
        return False
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    global _installed
    with _lock:
        if _installed is None:
            event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
            _installed = _after_cursor_execute
    return True


def uninstall() -> None:
    global _installed
    with _lock:
        if _installed is not None:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            event.remove(Engine, "after_cursor_execute", _installed)
            _installed = None
