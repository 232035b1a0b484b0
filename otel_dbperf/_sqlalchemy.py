"""SQLAlchemy instrumentation beyond contrib's declared range, and sqlcommenter.

``opentelemetry-instrumentation-sqlalchemy`` 0.66b declares ``sqlalchemy<2.1``,
so plain auto-instrumentation skips SQLAlchemy 2.1 with one error line. The
engine event API it uses is unchanged in 2.1, and our tests run against 2.1;
so otel-dbperf instruments 2.1 itself and says so. A major version we have
not tested is left alone, with a warning that says what to pin.
"""

from __future__ import annotations

import logging
import os
import re
from importlib import metadata
from typing import Any

from ._startup_log import log as _log
from ._startup_log import startup_warning
from .settings import Settings

TESTED_BELOW = (2, 2)  # SQLAlchemy versions otel-dbperf's tests cover: < 2.2
REFUSED_FROM = (3, 0)  # an untested major: not instrumented

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


def ensure_instrumented(settings: Settings) -> str:
    """Instrument SQLAlchemy when auto-instrumentation skipped it; returns what was done."""
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
    instrumentor.instrument(skip_dep_check=True, **instrumentor_kwargs(settings))
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
