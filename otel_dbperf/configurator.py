"""The ``opentelemetry_configurator`` entry point: the SDK's, plus our processors."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk._configuration import _OTelSDKConfigurator

from ._logs import start_log_hook
from ._setup import current_settings, log_effective, sdk_kwargs, sdk_patches, start_derived, state


class DbPerfConfigurator(_OTelSDKConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        settings = current_settings()
        views = kwargs.pop("views", None)
        with sdk_patches(settings, views):
            super()._configure(**{**sdk_kwargs(settings), **kwargs})  # type: ignore[no-untyped-call]
        start_log_hook(settings)
        start_derived(settings)
        state["configured"] = True
        log_effective(settings)
