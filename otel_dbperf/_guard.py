"""Hooks never raise into the application.

In production an internal error is counted and, the first time for each place and
error type, logged with its traceback on the ``otel_dbperf`` logger and written as one
line on stderr (what failed, what it turned off) whatever the log level and wherever
that logger's records go; under pytest it is re-raised so that bugs fail tests loudly.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from . import _forksafe
from ._startup_log import startup_warning

_log = logging.getLogger("otel_dbperf")

F = TypeVar("F", bound=Callable[..., Any])

#: None: re-raise when running under pytest. Tests may force True or False.
RERAISE: bool | None = None


class _State:
    """This module's state."""

    def __init__(self) -> None:
        self.errors = 0  # internal errors swallowed since start


_state = _State()
_lock = _forksafe.lock("guard")
_seen: set[str] = set()


def error_count() -> int:
    """How many internal errors were swallowed since start."""
    return _state.errors


#: what an error in each place turns off, for the stderr line (places not listed: that one call)
EFFECTS = {
    "on_start": "that span's code location and resource samples are skipped",
    "_on_ending": "that span is exported without its slow flag, N+1 verdict and metrics",
    "export": "that span is exported unenriched",
    "metrics": "that span's metrics are skipped",
    "sink": "that span's slow-query log record or profiler entry is skipped",
    "explain": "that query gets no plan",
    "explain.after_cursor_execute": "that query gets no plan",
    "otlp_json_file export": "that batch of spans is dropped",
    "profiler.add": "that query is missing from the profiler API",
    "profiler.http": "that profiler API request got a 500",
    "after_fork": "this worker process exports no derived metrics",
}


def _should_reraise() -> bool:
    if RERAISE is not None:
        return RERAISE
    return "PYTEST_CURRENT_TEST" in os.environ


def _raised_at(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}" if tb is not None else "?"


def internal_error(where: str, exc: BaseException, turned_off: str | None = None) -> None:
    """Record an internal error; re-raise it under pytest.

    ``turned_off`` says what the error costs (default: :data:`EFFECTS` of ``where``).
    The stderr line names the exception's type and where it was raised, never its
    message (which may quote application data).
    """
    if _should_reraise():
        raise exc
    with _lock:
        _state.errors += 1
        key = f"{where}:{type(exc).__name__}"
        first = key not in _seen
        if first and len(_seen) < 1000:
            _seen.add(key)
    if first:
        effect = turned_off or EFFECTS.get(where, "that call's work is skipped")
        startup_warning(
            "otel-dbperf: internal error in %s (%s at %s): %s; the application is unaffected",
            where,
            type(exc).__name__,
            _raised_at(exc),
            effect,
            exc_info=exc,
        )


def step(where: str, turned_off: str, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
    """Run one independent startup step: its failure turns off what it started, nothing else."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - one step never stops the others
        internal_error(where, exc, turned_off)
        return default


def guarded(where: str, default: Any = None) -> Callable[[F], F]:
    """Decorator: exceptions become :func:`internal_error` and ``default`` is returned."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the whole point
                internal_error(where, exc)
                return default

        return wrapper  # type: ignore[return-value]

    return deco


def _after_fork_error(where: str, exc: BaseException) -> None:
    """A fork callback's failure: an internal error; re-raised under pytest, it is printed and counted
    instead (never propagated into ``fork()``)."""
    try:
        internal_error(where, exc)
    except Exception:  # noqa: BLE001 - visible, never propagated into fork()
        import traceback

        traceback.print_exc()
        _state.errors += 1


_forksafe.report_errors_with(_after_fork_error)
