"""The ``opentelemetry_configurator`` entry point: the SDK's, plus our processors."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk._configuration import _OTelSDKConfigurator

from ._setup import current_settings, log_effective, sdk_kwargs, state


class DbPerfConfigurator(_OTelSDKConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        settings = current_settings()
        super()._configure(**{**sdk_kwargs(settings), **kwargs})  # type: ignore[no-untyped-call]
        state["configured"] = True
        log_effective(settings)
