"""Contrib's per-query DB-API metrics, recorded on the derivation thread instead of the app's.

Under the database semantic-conventions opt-in (``OTEL_SEMCONV_STABILITY_OPT_IN=database``,
which the distro sets: it gives DB spans their stable names, ``db.query.text`` and the rest),
contrib's DB-API instrumentation (under psycopg, psycopg2, sqlite3, pymysql, ...) records two
histograms per query on the thread that ran it, inside the app's call:
``db.client.operation.duration`` and ``db.client.response.returned_rows``. Each is an SDK
measurement (its attributes hashed once per matching view, then aggregated under a lock), paid
even with no metric exporter (the SDK's provider then has no reader). The default views drop the
first (otel-dbperf's own, derived from the spans, counts every query once); the second is kept.

:func:`install` replaces the method that records them, ``CursorTracer._record_metrics`` of
``opentelemetry.instrumentation.dbapi`` (every DB-API instrumentation's cursor tracer derives from
that class and none overrides it; see ``_sdk_compat``), once at start-up:

- metrics exported (the derivation thread runs): the request thread puts the elapsed time, the
  cursor's ``rowcount``, the error's class and the current context in a bounded queue (one
  ``deque.append``); the derivation thread, and every metric collection (which drains first),
  records them through contrib's own instruments with contrib's own attributes: the same series,
  views and exemplars as before, the same names and labels in Prometheus. Past
  :data:`MAX_QUEUE` waiting queries they are dropped and counted in ``dbperf.metrics.dropped``.
- no metric reader (``OTEL_METRICS_EXPORTER=none``): what contrib would record reaches no one,
  so nothing is recorded.
- otherwise (``DBPERF_ENABLED=false``, another meter provider, no database opt-in): contrib is
  left as it is.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from typing import Any

from opentelemetry.context import get_current

from .. import _forksafe
from .._guard import internal_error
from .._sdk_compat import contrib_db_histograms, contrib_metric_attributes, dbapi_cursor_tracer_class

MAX_QUEUE = 100_000  # queries whose contrib metrics await the derivation thread
_RECORD = "_record_metrics"  # contrib's CursorTracer method, replaced by one of the two below
_PARAMETERS = ["self", "cursor", "operation_name", "start_time", "error"]  # how contrib calls it
_perf_counter = time.perf_counter


class _State:
    queue: deque[tuple[Any, ...]] = deque()
    deriver: Any = None  # the SpanDeriver that drains the queue (its ``dropped`` counts our drops)
    original: Any = None  # contrib's method, while replaced
    mode = ""  # "deferred", "none" or "" (contrib's own)


# ---- request thread ----------------------------------------------------------------------------
def _deferred(self: Any, cursor: Any, operation_name: str, start_time: float, error: Any) -> None:
    """Contrib's ``_record_metrics``, its measurements queued for the derivation thread."""
    try:
        elapsed = _perf_counter() - start_time
        queue = _State.queue
        if len(queue) < MAX_QUEUE:
            if error is None:
                queue.append((self, operation_name, elapsed, None, getattr(cursor, "rowcount", None), get_current()))
            else:
                queue.append((self, operation_name, elapsed, error.__class__, None, get_current()))
        else:
            _State.deriver.dropped += 1
    except Exception as exc:  # noqa: BLE001 - never the app's query
        internal_error("contrib metrics", exc)


def _nothing(self: Any, cursor: Any, operation_name: str, start_time: float, error: Any) -> None:
    """Contrib's ``_record_metrics`` when the meter provider has no reader: nothing to record."""


# ---- derivation thread -------------------------------------------------------------------------
def drain() -> None:
    """Record the queued measurements as contrib would have (called with the deriver's lock held)."""
    queue = _State.queue
    for _ in range(len(queue)):
        try:
            tracer, operation_name, elapsed, error_type, rows, context = queue.popleft()
        except IndexError:
            return
        try:
            duration, returned_rows = contrib_db_histograms(tracer)
            if duration is None:
                continue
            attributes = contrib_metric_attributes(tracer, operation_name, error_type)
            duration.record(elapsed, attributes=attributes, context=context)
            if error_type is None and isinstance(rows, int) and rows >= 0 and returned_rows is not None:
                returned_rows.record(rows, attributes=attributes, context=context)
        except Exception as exc:  # noqa: BLE001
            internal_error("contrib metrics", exc)


def _after_fork_in_child() -> None:
    _State.queue.clear()  # the parent's queries


# ---- start-up ----------------------------------------------------------------------------------
def install(deriver: Any, meter_provider: Any) -> str:
    """Take contrib's per-query DB-API metrics off the request thread; returns the mode chosen.

    ``deriver``: the running :class:`~.derive.SpanDeriver` when metrics are exported (their
    measurements are deferred to it); else None, and ``meter_provider`` the global one: with no
    reader, nothing is recorded; any other provider leaves contrib alone.
    """
    from .._sdk_compat import db_semconv_stable, meter_readers

    cls = dbapi_cursor_tracer_class()
    if cls is None or _State.mode or not db_semconv_stable():
        return ""  # no DB-API instrumentation; already done; contrib records no DB metric
    if deriver is not None:
        mode, replacement = "deferred", _deferred
        _State.deriver = deriver
        deriver.also_drain(drain)
    elif meter_readers(meter_provider) == ():
        mode, replacement = "none", _nothing
    else:
        return ""
    original = cls.__dict__.get(_RECORD)
    if original is None or list(inspect.signature(original).parameters) != _PARAMETERS:
        return ""  # not the method this was checked against: contrib records as it does
    _State.original = original
    setattr(cls, _RECORD, replacement)
    _State.mode = mode
    _forksafe.register(_after_fork_in_child)
    return mode


def uninstall() -> None:
    """Contrib's own method back (tests)."""
    cls = dbapi_cursor_tracer_class()
    if cls is not None and _State.original is not None:
        setattr(cls, _RECORD, _State.original)
    _State.original = None
    _State.mode = ""
    _State.deriver = None
    _State.queue.clear()
