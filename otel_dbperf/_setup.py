"""Shared by the configurator, the distro and :func:`otel_dbperf.configure`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from ._processor import DbPerfSpanProcessor
from .settings import Settings, describe_effective

_log = logging.getLogger("otel_dbperf")

state = {"configured": False}


@lru_cache(maxsize=1)
def current_settings() -> Settings:
    """The process's settings, parsed once (so each bad value warns once)."""
    settings = Settings.from_env()
    if settings.log_level and not _log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        _log.addHandler(handler)
        _log.setLevel(settings.log_level)
        _log.propagate = False
    return settings


def sdk_kwargs(settings: Settings) -> dict[str, Any]:
    """The keyword arguments for the SDK's ``_initialize_components``."""
    if not settings.enabled:
        return {}

    processor = DbPerfSpanProcessor(settings)

    def export_processor(exporter: SpanExporter) -> SpanProcessor:
        return BatchSpanProcessor(processor.wrap_exporter(exporter))

    factory: Callable[[SpanExporter], SpanProcessor] = export_processor
    return {"span_processors": [processor], "export_span_processor": factory}


def log_effective(settings: Settings) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("%s", describe_effective(settings))
