"""The ``opentelemetry_configurator`` entry point: the SDK's, plus our processors."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.environment_variables import OTEL_CONFIG_FILE

from ._guard import step
from ._logs import start_log_hook
from ._runtime import (
    log_effective,
    refuse_declarative,
    runtime,
    sdk_kwargs,
    sdk_patches,
    start_derived,
)
from .exporters._watch import watching
from .settings import current_settings


class DbPerfConfigurator(_OTelSDKConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        settings = current_settings()
        views = kwargs.pop("views", None)
        if os.environ.get(OTEL_CONFIG_FILE):
            refuse_declarative(settings, os.environ[OTEL_CONFIG_FILE])
            super()._configure(**kwargs)  # type: ignore[no-untyped-call]
            return
        ours = step("span processors", "DB spans are NOT enriched", sdk_kwargs, settings, default={})
        with sdk_patches(settings, views), watching(settings):
            super()._configure(**{**ours, **kwargs})  # type: ignore[no-untyped-call]
        step("app log export", "app log records are NOT exported", start_log_hook, settings)
        runtime.configured = True
        step("metrics and slow-query logs setup", "no derived metrics, slow-query logs or profiler API",
             start_derived, settings)  # fmt: skip
        log_effective(settings)
