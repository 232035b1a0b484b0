"""The composition root: builds every part from the settings, in one place.

Called in this order by the configurator (``opentelemetry-instrument``) or
:func:`otel_dbperf.configure`: :func:`sdk_kwargs` (the span processor and the export
wrapper, given to the SDK), :func:`sdk_patches` (our views, while the SDK builds its
providers), :func:`start_derived` (the derivation thread and its sinks: metrics, slow-query
log, profiler), then from the post-instrument hook :func:`start_sqlalchemy` (the SQLAlchemy listeners).
What was built is kept in :data:`runtime`; the processor's :class:`Thresholds` go to every part that
judges by a threshold.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.environment_variables import OTEL_LOGS_EXPORTER, OTEL_METRICS_EXPORTER, OTEL_TRACES_EXPORTER
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from . import _prefork
from ._guard import step
from ._pipeline import DbPerfSpanProcessor, Sink, SpanDeriver, Thresholds
from ._sdk_compat import CHECKED, exporter_entry_point_name, is_sdk_meter_provider, replaced, span_layout_ok
from ._startup_log import startup_warning
from .exporters._otlp import fast_exporter
from .exporters._watch import WatchedSpanExporter
from .settings import Settings, describe_effective

_log = logging.getLogger("otel_dbperf")


@dataclass
class Runtime:
    """What this process built (one per process; a forked child keeps the parent's objects)."""

    configured: bool = False  # our configurator ran
    declarative: bool = False  # OTEL_CONFIG_FILE: the SDK built everything itself
    processor: DbPerfSpanProcessor | None = None
    deriver: SpanDeriver | None = None
    metric_exporters: str = ""  # OTEL_METRICS_EXPORTER as the SDK saw it
    fork_hooks: _prefork.ForkHooks | None = None
    meter_provider: Any = None  # the SDK's, when metrics are exported (None: no derived metrics)


runtime = Runtime()


def sdk_kwargs(settings: Settings) -> dict[str, Any]:
    """The keyword arguments for the SDK's ``_initialize_components``."""
    if not settings.enabled:
        return _safety_only(settings)
    if not span_layout_ok():
        startup_warning(
            "otel-dbperf: this OpenTelemetry SDK's spans are not laid out as otel-dbperf knows them "
            "(checked with opentelemetry-sdk %s to %s), so DB spans are NOT enriched; install a supported SDK",
            *CHECKED["opentelemetry-sdk"],
        )
        return {}
    processor = DbPerfSpanProcessor(settings)

    def export_processor(exporter: SpanExporter) -> SpanProcessor:
        # the SDK's OTLP/HTTP protobuf exporter gets otel-dbperf's encoder (DBPERF_OTLP_ENCODER)
        sender = fast_exporter(exporter, settings.otlp_encoder)
        return BatchSpanProcessor(processor.wrap_exporter(WatchedSpanExporter(sender)))

    factory: Callable[[SpanExporter], SpanProcessor] = export_processor
    runtime.processor = processor
    return {"span_processors": [processor], "export_span_processor": factory}


def _safety_only(settings: Settings) -> dict[str, Any]:
    """``DBPERF_ENABLED=false``: plain OpenTelemetry, except that what otel-dbperf removes stays removed:
    statements sanitized (``DBPERF_SANITIZE_STATEMENTS``), error texts scrubbed, URL parameters
    redacted, on the export thread. No span processor of ours, nothing measured or added."""
    if not span_layout_ok():
        return {}
    processor = DbPerfSpanProcessor(settings)  # never registered: it only lends its settings to the exporter

    def export_processor(exporter: SpanExporter) -> SpanProcessor:
        return BatchSpanProcessor(processor.wrap_exporter(exporter, safety_only=True))

    return {"export_span_processor": export_processor}


def _thresholds(settings: Settings) -> Thresholds:
    processor = runtime.processor
    return processor.thresholds if processor is not None else Thresholds.from_settings(settings)


def refuse_declarative(settings: Settings, config_file: str) -> None:
    """``OTEL_CONFIG_FILE``: the SDK builds everything from the file and takes no processors of ours."""
    runtime.declarative = True
    if settings.enabled:
        startup_warning(
            "otel-dbperf: OTEL_CONFIG_FILE=%s is set, so the OpenTelemetry SDK builds its providers from that "
            "file alone and takes no processors from otel-dbperf: DB spans are NOT enriched and no dbperf "
            "metrics, slow-query logs or plans are made. To use otel-dbperf, unset OTEL_CONFIG_FILE and "
            "configure with OTEL_* environment variables.",
            config_file,
        )


def log_effective(settings: Settings) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("%s", describe_effective(settings))


@contextmanager
def sdk_patches(settings: Settings, views: Sequence[Any] | None) -> Iterator[None]:
    """While the SDK builds its providers: our metric views, and no pull exporter where it can't work.

    The SDK's ``_init_metrics`` builds its ``MeterProvider`` without views; for this
    call only, the name it calls is a wrapper that adds ours (the public ``views``
    argument; a test pins this to the SDK range we support).
    """
    if not settings.enabled:
        yield
        return
    from opentelemetry.sdk import _configuration as sdk_configuration

    from .metrics import default_views

    chosen = tuple(views) if views is not None else default_views(_thresholds(settings).slow_ms)

    def with_views(original: Any) -> Any:
        def meter_provider(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("views", chosen)
            return original(*args, **kwargs)

        return meter_provider

    saved = {variable: os.environ.get(variable) for variable in _EXPORTER_VARIABLES.values()}
    refusal = _prefork.pull_refusal(os.environ, sys.argv)
    if refusal:
        startup_warning("%s", refusal)
        os.environ[OTEL_METRICS_EXPORTER] = _prefork.without_pull_exporter(saved[OTEL_METRICS_EXPORTER] or "")
    step("exporter check", "none (the SDK checks the exporters itself)", _without_missing_exporters)
    runtime.metric_exporters = os.environ.get(OTEL_METRICS_EXPORTER, "")
    try:
        with replaced(sdk_configuration, "MeterProvider", with_views):
            yield
    finally:
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


_EXPORTER_VARIABLES = {"traces": OTEL_TRACES_EXPORTER, "metrics": OTEL_METRICS_EXPORTER, "logs": OTEL_LOGS_EXPORTER}
#: what to install for an exporter name that has no entry point
_EXPORTER_PACKAGES = {
    "prometheus": "'otel-dbperf[prometheus]'",
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
}


def _without_missing_exporters() -> None:
    """Exporters named in ``OTEL_*_EXPORTER`` but not installed are left out, with one warning each.

    The SDK raises on the first one, and ``opentelemetry-instrument`` then skips every
    instrumentation: one missing package would turn off all telemetry.
    """
    from opentelemetry.util._importlib_metadata import entry_points

    for signal, variable in _EXPORTER_VARIABLES.items():
        value = os.environ.get(variable, "")
        names = _prefork.exporter_names(value)
        kept = []
        for name in names:
            try:
                resolved = exporter_entry_point_name(name, signal)
            except RuntimeError:  # an unsupported OTLP protocol: the SDK's own error says so
                kept.append(name)
                continue
            if entry_points(group=f"opentelemetry_{signal}_exporter", name=resolved):
                kept.append(name)
                continue
            startup_warning(
                "otel-dbperf: %s=%s names the exporter '%s', which is not installed (pip install %s); "
                "%s are exported without it",
                variable,
                value,
                resolved,
                _EXPORTER_PACKAGES.get(resolved, f"the package that provides '{resolved}'"),
                signal,
            )
        if kept != names:
            os.environ[variable] = ",".join(kept) or "none"


def start_derived(settings: Settings) -> None:
    """Once the SDK's providers exist: metrics, slow-query log records and the profiler API.

    All three are fed by one derivation thread from the spans the processor measured.
    """
    processor = runtime.processor
    if not settings.enabled or processor is None:
        return
    from opentelemetry._logs import get_logger_provider
    from opentelemetry.metrics import get_meter_provider

    from ._pipeline import contrib_metrics
    from ._pipeline.derive import build_deriver
    from ._version import __version__

    def metrics_provider() -> Any:
        provider: Any = get_meter_provider()
        if not _prefork.exporter_names(runtime.metric_exporters) or not is_sdk_meter_provider(provider):
            return None  # no metrics exporter, or not the SDK's provider: someone else set metrics up
        return provider

    def slow_query_log() -> Any:
        logger_provider = get_logger_provider()
        if (
            settings.slow_query_logs_per_minute > 0
            and _prefork.exporter_names(os.environ.get("OTEL_LOGS_EXPORTER", ""))
            and hasattr(logger_provider, "force_flush")
        ):
            from ._pipeline.slowlog import SlowQueryLog

            return SlowQueryLog(settings, logger_provider, __version__, thresholds=processor.thresholds)
        return None

    # each part on its own: one that fails is left out, the others still start
    meter_provider = step("metrics setup", "no derived metrics", metrics_provider)
    runtime.meter_provider = meter_provider
    sinks: list[Sink] = []
    sink = step("slow-query log setup", "no slow-query log records", slow_query_log)
    if sink is not None:
        sinks.append(sink)
    if settings.profiler_addr or settings.profiler_mount:
        from .profiler import startup as profiler_startup

        sink = step(
            "profiler API setup",
            "no profiler API",
            profiler_startup.start_profiler,
            settings,
            processor.thresholds,
            _drain_deriver,
        )
        if sink is not None:
            sinks.append(sink)
    deriver = None
    if meter_provider is not None or sinks:
        deriver = build_deriver(processor.thresholds, meter_provider, sinks, __version__)
        processor.attach_deriver(deriver.submit)
        runtime.deriver = deriver
        metrics = getattr(deriver, "metrics", None)
        if metrics is not None:  # the request findings' counter and the event-loop stalls' histogram
            metrics.judge_findings(processor.thresholds, processor.resources)
            processor.watchdog.record_stall = metrics.record_stall
        runtime.fork_hooks = _prefork.ForkHooks(meter_provider, deriver)
        atexit.register(deriver.drain_at_exit)  # runs before the SDK's shutdown export (registered earlier)
    # contrib's per-query DB-API metrics: recorded by the deriver when metrics are exported, else dropped
    exported = deriver if meter_provider is not None else None
    step("contrib DB-API metrics off the request thread", "contrib's per-query DB metrics stay on the request thread",
         lambda: contrib_metrics.install(exported, get_meter_provider()))  # fmt: skip


def _drain_deriver() -> None:
    deriver = runtime.deriver
    if deriver is not None:
        deriver.drain(time.monotonic() + 1.0)


def start_sqlalchemy(settings: Settings) -> None:
    """The SQLAlchemy listeners: EXPLAIN, duplicates, pools and transactions (see ``_sqla``)."""
    processor = runtime.processor
    if not settings.enabled or processor is None or runtime.declarative:
        return
    from . import _sqla
    from ._version import __version__

    _sqla.install(settings, processor.thresholds, runtime.meter_provider, __version__, processor)
