"""Entry points that run whichever distro ``opentelemetry-instrument`` picked."""

from __future__ import annotations

import os

from ._guard import guarded, step
from ._runtime import runtime, start_sqlalchemy
from ._startup_log import startup_warning
from .settings import current_settings

#: what a failed listeners' set-up costs (each listener's own step says so when only it fails)
_NO_LISTENERS = "no EXPLAIN plans, duplicate counts, pool or transaction figures"


@guarded("post_instrument")
def post_instrument() -> None:
    """``opentelemetry_post_instrument``: SQLAlchemy 2.1, the SQLAlchemy listeners, and a clash with another distro.

    Each step is independent: one that fails turns off its own feature (one stderr line
    says which), never the next.
    """
    from ._sqla import instrument as _sqlalchemy

    settings = current_settings()
    step("SQLAlchemy instrumentation", "no SQLAlchemy spans", _sqlalchemy.ensure_instrumented, settings)
    if runtime.configured:
        step("SQLAlchemy listeners setup", _NO_LISTENERS, start_sqlalchemy, settings)
    if settings.enabled and not runtime.configured and not runtime.declarative:
        startup_warning(
            "otel-dbperf: another OpenTelemetry configurator ran (OTEL_PYTHON_DISTRO=%s, "
            "OTEL_PYTHON_CONFIGURATOR=%s), so DB spans are NOT enriched; to choose otel-dbperf set "
            "OTEL_PYTHON_DISTRO=otel_dbperf OTEL_PYTHON_CONFIGURATOR=otel_dbperf "
            "(or pip uninstall opentelemetry-distro)",
            os.environ.get("OTEL_PYTHON_DISTRO", "<unset>"),
            os.environ.get("OTEL_PYTHON_CONFIGURATOR", "<unset>"),
        )
