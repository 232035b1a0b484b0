"""The ``opentelemetry_distro`` entry point: environment defaults only."""

from __future__ import annotations

import logging
import os
from importlib.util import find_spec
from typing import Any

from opentelemetry.environment_variables import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_TRACES_EXPORTER,
)
from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.instrumentation.environment_variables import OTEL_PYTHON_CONFIGURATOR
from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_PROTOCOL

from ._guard import step
from ._sdk_compat import comment_once_in_dbapi
from ._sqla import instrument as _sqlalchemy
from .settings import current_settings

NAME = "otel_dbperf"  # the name of our distro and configurator entry points

#: ``opentelemetry-instrument``'s two lines for a configurator passed over in favour of ours, when
#: it is ``opentelemetry-distro``'s (entry point ``configurator``): expected, and nothing is lost.
_PASSED_OVER = {
    ("Configuration of %s not loaded, %s already loaded", ("configurator", NAME)),
    ("Configuration of %s not loaded because %s is set by %s", ("configurator", NAME, OTEL_PYTHON_CONFIGURATOR)),
}


class _PassedOverFilter(logging.Filter):
    """Drops exactly those two records; every other record of that logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return (record.msg, record.args) not in _PASSED_OVER
        except TypeError:  # an unhashable message or argument: not one of ours
            return True


def install_sqlite3_shortcuts() -> None:
    """sqlite3's ``conn.execute()`` and kin traced through contrib's cursor tracing (see ``_sqlite3``)."""
    if find_spec("_sqlite3") is None or find_spec("opentelemetry.instrumentation.dbapi") is None:
        return  # no sqlite3, or no contrib DB-API tracing: nothing to do
    from . import _sqlite3

    _sqlite3.install()


_SQLITE3_SHORTCUTS = ("sqlite3 connection shortcuts", "conn.execute()/executemany()/executescript() stay untraced")


# Driver instrumentations that take sqlcommenter options as instrumentor kwargs (no env var): with
# DBPERF_SQLCOMMENTER=true their statements carry the traceparent too, not only SQLAlchemy's. Under
# SQLAlchemy the statement carries one comment, the ORM's (see _sdk_compat.comment_once_in_dbapi).
_COMMENTER_DRIVERS = frozenset({"psycopg", "psycopg2"})


class DbPerfDistro(BaseDistro):
    def _configure(self, **kwargs: Any) -> None:
        os.environ.setdefault(OTEL_TRACES_EXPORTER, "otlp")
        os.environ.setdefault(OTEL_METRICS_EXPORTER, "otlp")
        os.environ.setdefault(OTEL_LOGS_EXPORTER, "otlp")
        os.environ.setdefault(OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")
        os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http,database")
        os.environ.setdefault(OTEL_PYTHON_CONFIGURATOR, NAME)
        # app log records: not OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED (a root handler), see _logs.py
        _sqlalchemy.install_conflict_filter()
        loader = logging.getLogger(_sqlalchemy._LOAD_LOGGER)
        if not any(isinstance(f, _PassedOverFilter) for f in loader.filters):
            loader.addFilter(_PassedOverFilter())

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        if entry_point.name == "system_metrics" and current_settings().enabled:
            # process CPU and memory only (the instrumentation's default is ~30 system-wide metrics); imported
            # here: .metrics imports the SDK's metrics, which the pytest guard (no metrics) never needs
            from .metrics import SYSTEM_METRICS_CONFIG

            entry_point.load()(config=dict(SYSTEM_METRICS_CONFIG)).instrument(**kwargs)
            return
        if entry_point.name == "sqlalchemy":
            kwargs.update(_sqlalchemy.instrumentor_kwargs(current_settings()))
            step("SQLAlchemy instrumentation (greenlet check)", "async-less SQLAlchemy may be left uninstrumented",
                 _sqlalchemy.prepare, entry_point.load()())  # fmt: skip
        if entry_point.name in _COMMENTER_DRIVERS:
            commenter = _sqlalchemy.instrumentor_kwargs(current_settings())
            if commenter:
                step("sqlcommenter on the driver", "a statement may carry two comments", comment_once_in_dbapi)
                kwargs.update(commenter)
        if entry_point.name == "sqlite3" and current_settings().enabled:
            step(*_SQLITE3_SHORTCUTS, install_sqlite3_shortcuts)
        super().load_instrumentor(entry_point, **kwargs)
