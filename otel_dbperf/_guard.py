"""Hooks never raise into the application.

In production an internal error is logged (once per error type) and counted;
under pytest it is re-raised so that bugs fail tests loudly.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_log = logging.getLogger("otel_dbperf")

F = TypeVar("F", bound=Callable[..., Any])

#: None: re-raise when running under pytest. Tests may force True or False.
RERAISE: bool | None = None

_lock = threading.Lock()
_seen: set[str] = set()
errors = 0  # internal errors swallowed since start


def _should_reraise() -> bool:
    if RERAISE is not None:
        return RERAISE
    return "PYTEST_CURRENT_TEST" in os.environ


def internal_error(where: str, exc: BaseException) -> None:
    """Record an internal error; re-raise it under pytest."""
    global errors
    if _should_reraise():
        raise exc
    with _lock:
        errors += 1
        key = f"{where}:{type(exc).__name__}"
        first = key not in _seen
        if first and len(_seen) < 1000:
            _seen.add(key)
    if first:
        _log.warning("otel-dbperf: internal error in %s (the application is unaffected)", where, exc_info=exc)


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
