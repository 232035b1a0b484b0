"""otel-dbperf: find and fix slow database work with OpenTelemetry.

Launch an unchanged app with ``opentelemetry-instrument``; DB client spans get
the code location that issued them, slow flags, sanitized statements with
stable fingerprints, and each request's span gets its DB roll-up and N+1
verdict. Configuration is by ``DBPERF_*`` environment variables, documented in
``docs/configuration.md``:

DBPERF_ENABLED (true), DBPERF_SLOW_QUERY_THRESHOLD_MS (100),
DBPERF_STACKTRACE_THRESHOLD_MS (500), DBPERF_STACKTRACE_MAX_FRAMES (20),
DBPERF_STACKTRACE_SOURCE (false), DBPERF_CODE_LOCATION (true), DBPERF_APP_PATHS (current directory),
DBPERF_SANITIZE_STATEMENTS (true), DBPERF_APP_ERROR_TEXT (false), DBPERF_REDACT_URL_PARAMS (default),
DBPERF_STATEMENT_MAX_LENGTH (4096),
DBPERF_N_PLUS_ONE_THRESHOLD (5), DBPERF_LONG_TRANSACTION_MS (1000),
DBPERF_CPU_BOUND_THRESHOLD_MS (200), DBPERF_CPU_BOUND_RATIO (0.5), DBPERF_HTTP_N_PLUS_ONE_THRESHOLD (5),
DBPERF_EVENT_LOOP_BLOCKED_MS (100), DBPERF_SEQUENTIAL_QUERIES_THRESHOLD (3), DBPERF_RESOURCE_SAMPLES (request),
DBPERF_SLOW_QUERY_LOGS_PER_MINUTE (1), DBPERF_EXPLAIN (false),
DBPERF_EXPLAIN_ANALYZE (false), DBPERF_EXPLAIN_TIMEOUT_MS (200),
DBPERF_PROFILER_ADDR (unset), DBPERF_PROFILER_TOKEN (unset), DBPERF_PROFILER_MOUNT (unset),
DBPERF_PROFILER_MAX_HISTORY (1000), DBPERF_SQLCOMMENTER (false), DBPERF_LOG_LEVEL (unset),
DBPERF_APP_LOGS (true), DBPERF_FILE_PATH (dbperf-spans.jsonl), DBPERF_JAEGER_URL (unset),
DBPERF_SHUTDOWN_TIMEOUT_MS (2000), DBPERF_OTLP_ENCODER (fast);
for ``otel-dbperf dbmonitor`` (docs/database.md): DBPERF_DBMONITOR_DSN (unset),
DBPERF_DBMONITOR_DSN_FILE (unset), DBPERF_DBMONITOR_INTERVAL (15),
DBPERF_DBMONITOR_SAMPLE_INTERVAL (1), DBPERF_DBMONITOR_STATEMENTS_INTERVAL (60).

Apps that set OpenTelemetry up in code call :func:`configure` instead.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from ._pipeline import DbPerfSpanProcessor, EnrichingSpanExporter
    from .settings import Settings

__all__ = ["DbPerfSpanProcessor", "EnrichingSpanExporter", "Settings", "configure", "__version__"]

#: imported on first use: ``opentelemetry-instrument``'s launcher process imports this package only
#: to read ``_launcher``, the pytest plugin is imported by every pytest run where otel-dbperf is installed,
#: and a process that never asks for these should not pay for the pipeline
_LAZY = {"DbPerfSpanProcessor": "._pipeline", "EnrichingSpanExporter": "._pipeline", "Settings": ".settings"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def configure(*, instrument_sqlalchemy: bool = True, **kwargs: Any) -> None:
    """Set OpenTelemetry up in code, with the same result as ``opentelemetry-instrument``.

    Applies the distro's environment defaults, builds the SDK providers with the
    otel-dbperf processors (``kwargs`` go to the SDK configurator), and, unless
    told not to, instruments SQLAlchemy (any version otel-dbperf supports). sqlite3
    connections that ``SQLite3Instrumentor`` instruments trace ``execute``,
    ``executemany`` and ``executescript`` too.
    """
    from ._guard import step
    from ._hooks import _NO_LISTENERS
    from ._runtime import start_sqlalchemy
    from ._sqla import instrument as _sqlalchemy
    from .configurator import DbPerfConfigurator
    from .distro import _SQLITE3_SHORTCUTS, DbPerfDistro, install_sqlite3_shortcuts
    from .settings import current_settings

    DbPerfDistro().configure()
    DbPerfConfigurator().configure(**kwargs)  # type: ignore[no-untyped-call]
    settings = current_settings()
    if instrument_sqlalchemy:
        step("SQLAlchemy instrumentation", "no SQLAlchemy spans", _sqlalchemy.ensure_instrumented, settings)
    step("SQLAlchemy listeners setup", _NO_LISTENERS, start_sqlalchemy, settings)
    if settings.enabled:
        step(*_SQLITE3_SHORTCUTS, install_sqlite3_shortcuts)
