"""The class-level SQLAlchemy listener: a slow SELECT's plan, taken after it ran, left in its query's record."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ... import _forksafe
from ..._guard import internal_error
from ..._sdk_compat import contrib_query_span
from ..._sql import analyze
from .plan import (
    ATTR_DATABASE,
    ATTR_DURATION_MS,
    ATTR_ESTIMATED_ROWS,
    ATTR_FORMAT,
    ATTR_INDEX_HINT,
    ATTR_PLAN,
    ATTR_VERDICT,
    EVENT_EXPLAIN,
    Plan,
)
from .run import Explainer


def plan_attributes(plan: Plan) -> dict[str, Any]:
    """The attributes of the ``dbperf.explain`` span event."""
    attrs: dict[str, Any] = {
        ATTR_PLAN: plan.text,
        ATTR_FORMAT: plan.format,
        ATTR_VERDICT: plan.verdict,
        ATTR_DATABASE: plan.database,
    }
    if plan.estimated_rows is not None:
        attrs[ATTR_ESTIMATED_ROWS] = plan.estimated_rows
    if plan.index_hint:
        attrs[ATTR_INDEX_HINT] = plan.index_hint
    return attrs


OnPlan = Callable[[Any, Plan], None]


class _State:
    """This module's state."""

    def __init__(self) -> None:
        self.installed: Callable[..., None] | None = None  # the listener, while it listens
        self.lock = _forksafe.lock("explain.install")


_state = _State()


def install(explainer: Explainer, slow_ns: int, on_plan: OnPlan | None = None, records: Any = None) -> None:
    """Explain slow SELECTs of every SQLAlchemy engine; ``on_plan(span, plan)`` sees each plan.
    ``records``: the ``DbPerfSpanProcessor`` whose open queries keep the plans (None, or a span it
    does not have: the plan goes on the span as an event).

    ``slow_ns``: the pipeline's ``Thresholds.slow_ns``. The decision is made before
    the span ends (the plan needs the query's connection), on the time since the span began.

    The listener is class-level on ``Engine``: SQLAlchemy runs class-level listeners before
    the instance-level ones of contrib's instrumentation, so the query's span is still open.
    Installing again replaces the previous listener.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def after_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        try:
            _explain_slow_query(explainer, slow_ns, on_plan, records, conn, statement, parameters, context, executemany)
        except Exception as exc:  # noqa: BLE001 - never into the application
            internal_error("explain.after_cursor_execute", exc)

    with _state.lock:
        _uninstall_locked()
        event.listen(Engine, "after_cursor_execute", after_cursor_execute)
        _state.installed = after_cursor_execute


def uninstall() -> None:
    with _state.lock:
        _uninstall_locked()


def _uninstall_locked() -> None:
    if _state.installed is not None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "after_cursor_execute", _state.installed)
        _state.installed = None


def _explain_slow_query(
    explainer: Explainer,
    slow_ns: int,
    on_plan: OnPlan | None,
    records: Any,
    conn: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    span = contrib_query_span(context)  # not yet ended
    if span is None or executemany or not span.is_recording():
        return
    start = getattr(span, "start_time", None)
    ended_ns = time.time_ns()  # the SDK's clock for span times
    if not isinstance(start, int) or ended_ns - start < slow_ns:
        return
    if getattr(context, "_is_server_side", False):
        explainer.count("skipped.server_side_cursor")  # its rows are still on the server
        return
    fingerprint = analyze(statement, 4096, conn.dialect.name).fingerprint
    plan = explainer.explain(conn.connection.dbapi_connection, conn.dialect.name, statement, parameters, fingerprint)
    if plan is None:
        return
    # The span ends after the EXPLAIN: the event's time is when the query itself finished.
    attrs = {**plan_attributes(plan), ATTR_DURATION_MS: (time.time_ns() - ended_ns) / 1e6}
    query = records.open_query(span) if records is not None else None
    if query is not None:  # the exporter adds the event; the slow-query log and the profiler read it here
        query.plan = (attrs, ended_ns)
    else:
        span.add_event(EVENT_EXPLAIN, attrs, timestamp=ended_ns)
    if on_plan is not None:
        on_plan(span, plan)
