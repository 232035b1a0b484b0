"""Entry points that run whichever distro ``opentelemetry-instrument`` picked."""

from __future__ import annotations

import os

from ._guard import guarded, step
from ._runtime import runtime, start_duplicates, start_explain, start_pools
from ._startup_log import startup_warning
from .settings import current_settings


@guarded("post_instrument")
def post_instrument() -> None:
    """``opentelemetry_post_instrument``: SQLAlchemy 2.1, EXPLAIN, and a clash with another distro.

    Each step is independent: one that fails turns off its own feature (one stderr line
    says which), never the next.
    """
    from ._sqla import instrument as _sqlalchemy

    settings = current_settings()
    step("SQLAlchemy instrumentation", "no SQLAlchemy spans", _sqlalchemy.ensure_instrumented, settings)
    if runtime.configured:
        step("EXPLAIN setup", "no EXPLAIN plans (DBPERF_EXPLAIN)", start_explain, settings)
        step("duplicate-query setup", "no dbperf.db.duplicate_count", start_duplicates, settings)
        step("connection pool setup", "no pool metrics, waits or transactions", start_pools, settings)
    if settings.enabled and not runtime.configured and not runtime.declarative:
        startup_warning(
            "otel-dbperf: another OpenTelemetry configurator ran (OTEL_PYTHON_DISTRO=%s, "
            "OTEL_PYTHON_CONFIGURATOR=%s), so DB spans are NOT enriched; to choose otel-dbperf set "
            "OTEL_PYTHON_DISTRO=otel_dbperf OTEL_PYTHON_CONFIGURATOR=otel_dbperf "
            "(or pip uninstall opentelemetry-distro)",
            os.environ.get("OTEL_PYTHON_DISTRO", "<unset>"),
            os.environ.get("OTEL_PYTHON_CONFIGURATOR", "<unset>"),
        )
