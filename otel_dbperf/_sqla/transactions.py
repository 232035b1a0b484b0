"""Transactions per request: how many, the longest, and the time spent in them not running a query.

Class-level SQLAlchemy ``begin``, ``commit`` and ``rollback`` listeners on ``Engine``
(every engine, sync and async). At ``begin`` the request thread notes the time and how
many of the request's queries were recorded so far; at ``commit``/``rollback`` the
transaction's length (BEGIN to the COMMIT or ROLLBACK being issued) less the DB time of the
request's queries recorded meanwhile is its idle-in-transaction time: the application
doing other work while the transaction (and its locks) stayed open. Transactions outside
a request are not followed.

On the request's root span: ``dbperf.db.transaction_count``, ``dbperf.db.transaction_max_ms``,
``dbperf.db.idle_in_transaction_ms``, and for a transaction open at or over
``DBPERF_LONG_TRANSACTION_MS``: ``dbperf.db.long_transaction_count`` and a
``dbperf.long_transaction`` event.
"""

from __future__ import annotations

import time
from itertools import islice
from typing import Any

from .. import _forksafe
from .. import attributes as A
from .._guard import internal_error
from .._pipeline.record import Thresholds

_MAX_OPEN = 10_000  # open transactions followed at once (connections that never commit are dropped)
_now = time.perf_counter_ns


class _State:
    """This module's state."""

    def __init__(self) -> None:
        self.long_transaction_ns = 1_000_000_000  # Thresholds.long_transaction_ns
        self.open: dict[int, tuple[int, Any, int, int]] = {}  # id(Connection) -> (start, request, records, overflow_ns)
        self.installed: list[tuple[str, Any]] = []
        self.records: Any = None  # the DbPerfSpanProcessor whose requests the transactions are added to
        self.lock = _forksafe.lock("transactions")


_state = _State()


def _begin(conn: Any) -> None:
    try:
        records = _state.records
        request = records.current_request() if records is not None else None
        if request is None:
            return
        opened = _state.open
        if len(opened) >= _MAX_OPEN:
            for key in list(islice(opened, _MAX_OPEN // 10)):
                opened.pop(key, None)
        opened[id(conn)] = (_now(), request, len(request.records), request.overflow[1])
    except Exception as exc:  # noqa: BLE001 - never into the application
        internal_error("transactions.begin", exc)


def _end(conn: Any) -> None:
    try:
        entry = _state.open.pop(id(conn), None)
        if entry is None:
            return
        started, request, first, overflow_ns = entry
        length = _now() - started
        records = request.records
        busy = request.overflow[1] - overflow_ns
        for i in range(first, len(records)):
            busy += records[i].duration_ns
        request.add(A.DB_TRANSACTION_COUNT, 1)
        request.set_max(A.DB_TRANSACTION_MAX_MS, length / 1e6)
        request.add(A.DB_IDLE_IN_TRANSACTION_MS, max(0, length - busy) / 1e6)
        if length >= _state.long_transaction_ns:
            request.add(A.DB_LONG_TRANSACTION_COUNT, 1)
            request.event(
                A.EVENT_LONG_TRANSACTION,
                {
                    A.EVENT_DURATION_MS: length / 1e6,
                    A.EVENT_THRESHOLD_MS: _state.long_transaction_ns / 1e6,
                    A.DB_IDLE_IN_TRANSACTION_MS: max(0, length - busy) / 1e6,
                },
            )
    except Exception as exc:  # noqa: BLE001
        internal_error("transactions.end", exc)


def install(thresholds: Thresholds, records: Any = None) -> bool:
    """Listen on every SQLAlchemy engine (idempotent); ``records``: the ``DbPerfSpanProcessor`` whose
    requests the transactions are added to (None: none). False when SQLAlchemy cannot be imported."""
    try:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
    except ImportError:
        return False
    with _state.lock:
        _state.long_transaction_ns = thresholds.long_transaction_ns
        _state.records = records
        if not _state.installed:
            for name, fn in (("begin", _begin), ("commit", _end), ("rollback", _end)):
                event.listen(Engine, name, fn)
                _state.installed.append((name, fn))
    return True


def uninstall() -> None:
    with _state.lock:
        if _state.installed:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            for name, fn in _state.installed:
                event.remove(Engine, name, fn)
            _state.installed = []
        _state.open = {}
        _state.records = None


def after_fork_in_child() -> None:
    """The child forgets the parent's open transactions (its copies of their connections keep their ids)."""
    _state.open = {}
