"""The composition root: builds every part from the settings, in one place.

Called in this order by the configurator (``opentelemetry-instrument``) or
:func:`otel_dbperf.configure`: :func:`sdk_kwargs` (the span processor and the export
wrapper, given to the SDK), :func:`sdk_patches` (our views, while the SDK builds its
providers), :func:`start_derived` (the derivation thread and its sinks: metrics, slow-query
log, profiler), then from the post-instrument hook :func:`start_explain`,
:func:`start_duplicates` and :func:`start_pools`. What was built is kept in :data:`runtime`.
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
from functools import lru_cache
from typing import Any

from opentelemetry.environment_variables import OTEL_LOGS_EXPORTER, OTEL_METRICS_EXPORTER, OTEL_TRACES_EXPORTER
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from . import _forksafe, _prefork
from ._backend import WatchedSpanExporter
from ._guard import step
from ._otlp import fast_exporter
from ._pipeline import DbPerfSpanProcessor, SpanDeriver, Thresholds
from ._sdk_compat import CHECKED, exporter_entry_point_name, is_sdk_meter_provider, replaced, span_layout_ok
from ._startup_log import startup_warning
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
    fork_hooks: Any = None
    explainer: Any = None
    profiler: Any = None  # the profiler API's own HTTP server
    profiler_hub: Any = None  # under a pre-fork server's master: the merged history of its workers
    profiler_relay: Any = None
    profiler_worker: Any = None
    profiler_mount: Any = None
    meter_provider: Any = None  # the SDK's, when metrics are exported (None: no derived metrics)


runtime = Runtime()


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

    chosen = tuple(views) if views is not None else default_views(settings.slow_query_threshold_ms)

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

    from . import __version__
    from ._pipeline.derive import build_deriver

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
            from ._slowlog import SlowQueryLog

            return SlowQueryLog(settings, logger_provider, __version__)
        return None

    # each part on its own: one that fails is left out, the others still start
    meter_provider = step("metrics setup", "no derived metrics", metrics_provider)
    runtime.meter_provider = meter_provider
    sinks: list[Any] = []
    sink = step("slow-query log setup", "no slow-query log records", slow_query_log)
    if sink is not None:
        sinks.append(sink)
    if settings.profiler_addr or settings.profiler_mount:
        sink = step("profiler API setup", "no profiler API", _start_profiler, settings)
        if sink is not None:
            sinks.append(sink)
    if meter_provider is None and not sinks:
        return
    deriver = build_deriver(processor.thresholds, meter_provider, sinks, __version__)
    processor.attach_deriver(deriver.submit)
    runtime.deriver = deriver
    runtime.fork_hooks = _prefork.ForkHooks(meter_provider, deriver)
    atexit.register(deriver.drain_at_exit)  # runs before the SDK's shutdown export (registered earlier)


#: set once the start-up said that the mount needs a token (inherited: said once per process tree)
_MOUNT_REFUSED_ENV = "_OTEL_DB_PROFILER_MOUNT_REFUSED"


def _start_profiler(settings: Settings) -> Any:
    """The profiler API's history sink, or None when it cannot start (one warning says why).

    Under a pre-fork server the master serves the merged view of its workers, each of which
    answers it on a Unix socket (see :mod:`otel_dbperf.profiler.hub`). ``DBPERF_PROFILER_MOUNT``
    serves the API on the app's port too (see :mod:`otel_dbperf.profiler.mount`).
    """
    from .profiler import HistorySink, QueryHistory, start
    from .profiler import hub as profiler_hub
    from .profiler.server import TOKEN_FORMAT, make_api, respond

    token = settings.profiler_token or None
    if token is not None and not TOKEN_FORMAT.fullmatch(token):
        # The message never contains the token itself.
        startup_warning("otel-dbperf: the profiler API is NOT started: DBPERF_PROFILER_TOKEN must be at least "
                        "16 visible ASCII characters (no spaces)")  # fmt: skip
        return None
    mount = settings.profiler_mount
    if mount and token is None:
        # Behind a reverse proxy (nginx with proxy_pass alone) every request to the app's port
        # comes from loopback and names a loopback host: no request can be told to be local.
        if not os.environ.get(_MOUNT_REFUSED_ENV):  # said once per process tree (spawned workers...)
            os.environ[_MOUNT_REFUSED_ENV] = "1"
            startup_warning("otel-dbperf: the profiler API is NOT mounted on the app's port "
                            "(DBPERF_PROFILER_MOUNT=%s): it needs DBPERF_PROFILER_TOKEN, since behind a reverse "
                            "proxy every request looks local", mount)  # fmt: skip
        mount = ""
        if not settings.profiler_addr:
            return None
    server_name = _prefork.prefork_server(os.environ, sys.argv)
    master = profiler_hub.hub_from_env(os.environ)
    history = QueryHistory(settings.profiler_max_history)
    if not server_name and master is not None and os.getppid() == master[0]:
        if not profiler_hub.is_spawned_worker_of(master, sys.argv):
            return None  # a helper of the master (multiprocessing's resource tracker): not a worker
        # uvicorn --workers: a spawned worker
        try:
            runtime.profiler_worker = profiler_hub.start_worker(history, master[1], master[0], _drain_deriver)
        except OSError as exc:
            startup_warning("otel-dbperf: this worker's queries are NOT in the profiler API: %s", exc)
            return None
        if mount and token is not None:
            _mount(mount, token, _relay_to(master[1]))
        return HistorySink(history, settings.sanitize_statements)
    view: Any = history
    if server_name:
        merged = profiler_hub.MergedHistory(history)
        os.environ[profiler_hub.HUB_ENV] = merged.environ_value()  # for the workers, forked or spawned
        atexit.register(merged.remove_directory)
        runtime.profiler_hub = view = merged
        _forksafe.register(_profiler_after_fork_in_child)
    threshold_s = settings.slow_query_threshold_ms / 1000.0
    serving = False
    if settings.profiler_addr:
        try:
            server = start(settings.profiler_addr, token, view, threshold_s)
        except (ValueError, OSError) as exc:
            startup_warning("otel-dbperf: the profiler API is NOT started (DBPERF_PROFILER_ADDR=%s): %s",
                            settings.profiler_addr, exc)  # fmt: skip
        else:
            serving = True
            runtime.profiler = server
            _log.info(
                "otel-dbperf: profiler API on %s%s", server.url, f" (every {server_name} worker)" * bool(server_name)
            )
    if mount and token is not None:
        api = make_api(view, threshold_s, True)
        mount_token = token

        def answer(method: str, path: str, query: str, authorization: str | None) -> Any:
            return respond(api, mount_token, method, path, query, authorization)

        if server_name:  # the workers serve the app's port: they relay to the master
            try:
                relay = profiler_hub.MountRelay(view.directory, answer)
                relay.start()
                runtime.profiler_relay = relay
                serving = _mount(mount, token, _relay_to(view.directory)) or serving
            except OSError as exc:
                startup_warning("otel-dbperf: the profiler API is NOT mounted (DBPERF_PROFILER_MOUNT=%s): %s",
                                mount, exc)  # fmt: skip
        else:
            serving = _mount(mount, token, answer) or serving
    if not serving:
        if server_name:
            os.environ.pop(profiler_hub.HUB_ENV, None)
            runtime.profiler_hub = None
        return None
    return HistorySink(history, settings.sanitize_statements)


def _relay_to(directory: str) -> Any:
    from .profiler import hub as profiler_hub

    def answer(method: str, path: str, query: str, authorization: str | None) -> Any:
        request = {"method": method, "path": path, "query": query, "authorization": authorization}
        return profiler_hub.relay(directory, request)

    return answer


def _mount(prefix: str, token: str, answer: Any) -> bool:
    from .profiler.mount import Mount, install

    mount = Mount(prefix, token, answer)
    servers = install(mount)
    if not servers:
        startup_warning(
            "otel-dbperf: the profiler API is NOT mounted (DBPERF_PROFILER_MOUNT=%s): neither gunicorn "
            "nor uvicorn is installed (the mount wraps the app they serve)",
            prefix,
        )
        return False
    runtime.profiler_mount = mount
    return True


def _drain_deriver() -> None:
    deriver = runtime.deriver
    if deriver is not None:
        deriver.drain(time.monotonic() + 1.0)


def _profiler_after_fork_in_child() -> None:
    """A worker forked by the master (gunicorn): serve this worker's history to the master."""
    merged = runtime.profiler_hub
    if merged is None or os.getppid() != merged.master_pid:
        return  # not a worker of ours (a child of a worker, ...)
    server, runtime.profiler = runtime.profiler, None
    if server is not None:
        server._server.server_close()  # noqa: SLF001 - the master's sockets: not the worker's
    relay, runtime.profiler_relay = runtime.profiler_relay, None
    if relay is not None and relay._sock is not None:  # noqa: SLF001
        relay._sock.close()  # noqa: SLF001 - likewise
    runtime.profiler_hub = None
    merged.local.reset()  # the master's own queries are the master's
    from .profiler import hub as profiler_hub

    try:
        runtime.profiler_worker = profiler_hub.start_worker(
            merged.local, merged.directory, merged.master_pid, _drain_deriver
        )
    except OSError as exc:
        _log.warning("otel-dbperf: worker %d's queries are NOT in the profiler API: %s", os.getpid(), exc)


def start_explain(settings: Settings) -> None:
    """``DBPERF_EXPLAIN``: EXPLAIN slow SELECTs of every SQLAlchemy engine (see docs/explain.md)."""
    if not (settings.enabled and settings.explain) or runtime.explainer is not None or runtime.declarative:
        return
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        startup_warning(
            "otel-dbperf: DBPERF_EXPLAIN=true but SQLAlchemy is not installed: plans are taken on "
            "SQLAlchemy engines only, so there will be none"
        )
        return
    from ._explain import ExplainConfig, Explainer, install

    config = ExplainConfig(analyze=settings.explain_analyze, timeout_ms=settings.explain_timeout_ms)
    explainer = Explainer(config)
    thresholds = runtime.processor.thresholds if runtime.processor else Thresholds.from_settings(settings)
    install(explainer, thresholds.slow_ns, records=runtime.processor)
    runtime.explainer = explainer


def start_duplicates(settings: Settings) -> None:
    """Exact duplicate queries: a digest of each query's parameters (see ``_duplicates``)."""
    if settings.enabled and runtime.processor is not None:
        from . import _duplicates

        _duplicates.install(runtime.processor)


def start_pools(settings: Settings) -> None:
    """Connection pools and transactions of every SQLAlchemy engine (see ``_pools``, ``_transactions``)."""
    if not settings.enabled or runtime.processor is None or "sqlalchemy" not in sys.modules:
        return
    from . import __version__, _pools, _transactions

    _pools.install(settings.slow_query_threshold_ms, runtime.meter_provider, __version__, records=runtime.processor)
    _transactions.install(settings.long_transaction_ms, records=runtime.processor)
