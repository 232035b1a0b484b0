"""The ``opentelemetry_distro`` entry point: environment defaults only."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.environment_variables import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_TRACES_EXPORTER,
)
from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.instrumentation.environment_variables import OTEL_PYTHON_CONFIGURATOR
from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_PROTOCOL

from . import _sqlalchemy
from ._setup import current_settings
from .metrics import SYSTEM_METRICS_CONFIG

NAME = "otel_dbperf"  # the name of our distro and configurator entry points


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

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        if entry_point.name == "system_metrics" and current_settings().enabled:
            # process CPU and memory only (the instrumentation's default is ~30 system-wide metrics)
            entry_point.load()(config=dict(SYSTEM_METRICS_CONFIG)).instrument(**kwargs)
            return
        if entry_point.name == "sqlalchemy":
            kwargs.update(_sqlalchemy.instrumentor_kwargs(current_settings()))
        super().load_instrumentor(entry_point, **kwargs)
