"""SQLAlchemy instrumentation beyond contrib's declared range, and sqlcommenter.

``opentelemetry-instrumentation-sqlalchemy`` 0.66b declares ``sqlalchemy<2.1``,
so plain auto-instrumentation skips SQLAlchemy 2.1 with one error line. The
engine event API it uses is unchanged in 2.1, and our tests run against 2.1;
so otel-dbperf instruments 2.1 itself and says so. A major version we have
not tested is left alone, with a warning that says what to pin.

SQLAlchemy 2.1 no longer installs greenlet, and its asyncio extension cannot be
imported without it. Contrib's instrumentor wraps ``create_engine`` and then
imports ``sqlalchemy.ext.asyncio`` to wrap ``create_async_engine``: without
greenlet that import raises, leaving the instrumentor half-applied and marked
uninstrumented. :func:`prepare` makes it whole: without greenlet the instrumentor
wraps the sync entry points only (no async engine can exist then) and its
``uninstrument`` undoes exactly those; with greenlet nothing changes.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

from .._sdk_compat import class_instrument_hook, instrumentor_hooks_replaced, replace_instrumentor_hooks
from .._startup_log import log as _log
from .._startup_log import startup_warning
from ..settings import Settings

TESTED_BELOW = (2, 2)  # SQLAlchemy versions otel-dbperf's tests cover: < 2.2
REFUSED_FROM = (3, 0)  # an untested major: not instrumented

ASYNC_FROM = (1, 4)  # sqlalchemy.ext.asyncio exists, and contrib wraps its create_async_engine
_ASYNC_MODULE = "sqlalchemy.ext.asyncio"
_CONFLICT_PREFIX = "sqlalchemy only instruments"
_LOAD_LOGGER = "opentelemetry.instrumentation.auto_instrumentation._load"


def installed_version() -> tuple[int, int] | None:
    try:
        raw = metadata.version("sqlalchemy")
    except metadata.PackageNotFoundError:
        return None
    match = re.match(r"(\d+)\.(\d+)", raw)
    return (int(match[1]), int(match[2])) if match else None


def instrumentor_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``SQLAlchemyInstrumentor().instrument``."""
    if settings.enabled and settings.sqlcommenter:
        return {"enable_commenter": True, "commenter_options": {}}
    return {}


class _ConflictFilter(logging.Filter):
    """Hides contrib's 'nothing can be instrumented' line for the SQLAlchemy we do instrument."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if record.getMessage().startswith(_CONFLICT_PREFIX):
                version = installed_version()
                return not (version is not None and version < REFUSED_FROM)
        except Exception:  # noqa: BLE001 - a log filter must not fail
            return True
        return True


def install_conflict_filter() -> None:
    logger = logging.getLogger(_LOAD_LOGGER)
    if not any(isinstance(f, _ConflictFilter) for f in logger.filters):
        logger.addFilter(_ConflictFilter())


def _disabled() -> bool:
    names = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return any(n.strip() in ("sqlalchemy", "*") for n in names.split(","))


def async_available() -> bool:
    """Whether SQLAlchemy's asyncio extension can work: it needs greenlet.

    Asks greenlet itself, as SQLAlchemy does: after one failed import of
    ``sqlalchemy.ext.asyncio`` SQLAlchemy remembers "no greenlet" and a second
    import succeeds, so the extension's importability says nothing.
    """
    try:
        from greenlet import getcurrent  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _without_async_wrap(contrib: Any) -> Iterator[None]:
    """While contrib's ``_instrument`` runs: its wrap of ``create_async_engine`` is skipped."""
    original = contrib._w

    def wrap(module: Any, name: str, wrapper: Any) -> Any:
        if module == _ASYNC_MODULE:
            return None
        return original(module, name, wrapper)

    contrib._w = wrap
    try:
        yield
    finally:
        contrib._w = original


def _sync_uninstrument(**_: Any) -> None:
    """Contrib's ``_uninstrument`` less the ``create_async_engine`` it never wrapped."""
    import sqlalchemy
    import sqlalchemy.engine.create
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.utils import unwrap
    from sqlalchemy.engine.base import Engine

    for module in (sqlalchemy, sqlalchemy.engine, sqlalchemy.engine.create):
        unwrap(module, "create_engine")
    unwrap(Engine, "connect")
    EngineTracer.remove_all_event_listeners()  # type: ignore[no-untyped-call]


def prepare(instrumentor: Any) -> bool:
    """Make contrib's (singleton) instrumentor sync-only when greenlet is missing; True if it did.

    Call before ``instrument()``. Contrib 0.66b1's ``_instrument`` wraps through its module's
    ``_w`` and its ``_uninstrument`` unwraps ``sqlalchemy.ext.asyncio``: both are pinned by
    ``tests/test_startup.py`` against the contrib version ``pyproject.toml`` pins.
    """
    version = installed_version()
    if version is None or version < ASYNC_FROM or async_available():
        return False
    if instrumentor_hooks_replaced(instrumentor):
        return True  # prepared already
    contrib = sys.modules[type(instrumentor).__module__]
    instrument_all = class_instrument_hook(instrumentor)

    def instrument_sync(**kwargs: Any) -> Any:
        with _without_async_wrap(contrib):
            return instrument_all(instrumentor, **kwargs)

    replace_instrumentor_hooks(instrumentor, instrument_sync, _sync_uninstrument)
    _log.info(
        "otel-dbperf: greenlet is not installed, so SQLAlchemy's asyncio extension cannot be imported: "
        "sync SQLAlchemy is instrumented, create_async_engine is not (pip install greenlet for async SQLAlchemy)"
    )
    return True


def ensure_instrumented(settings: Settings, **extra: Any) -> str:
    """Instrument SQLAlchemy when auto-instrumentation skipped it; returns what was done. ``extra``:
    more keyword arguments for the instrumentor (``engines``: engines made before, traced too)."""
    version = installed_version()
    if version is None or _disabled():
        return "absent-or-disabled"
    try:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    except ImportError:
        startup_warning(
            "otel-dbperf: SQLAlchemy is installed but opentelemetry-instrumentation-sqlalchemy is not; "
            "no SQL will be traced (pip install opentelemetry-instrumentation-sqlalchemy)"
        )
        return "no-instrumentation"
    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        return "already"
    prepare(instrumentor)
    shown = ".".join(map(str, version))
    if version >= REFUSED_FROM:
        startup_warning(
            "otel-dbperf: SQLAlchemy %s is newer than any version otel-dbperf is tested with, and "
            "opentelemetry-instrumentation-sqlalchemy does not declare it: NO SQL IS TRACED. "
            "Pin 'sqlalchemy<%d.%d' to get DB spans.",
            shown,
            *TESTED_BELOW,
        )
        return "refused"
    instrumentor.instrument(skip_dep_check=True, **instrumentor_kwargs(settings), **extra)
    if version >= TESTED_BELOW:
        startup_warning(
            "otel-dbperf: SQLAlchemy %s is outside the range otel-dbperf is tested with (<%d.%d); "
            "instrumented anyway. If DB spans look wrong, pin 'sqlalchemy<%d.%d'.",
            shown,
            *TESTED_BELOW,
            *TESTED_BELOW,
        )
    else:
        _log.info(
            "otel-dbperf: SQLAlchemy %s instrumented (opentelemetry-instrumentation-sqlalchemy "
            "declares an older range; otel-dbperf is tested with it)",
            shown,
        )
    return "instrumented"
