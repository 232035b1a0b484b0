"""A telemetry backend that is down: say so on stderr, count what is dropped, bound the flush at exit.

Without this a Collector that is down is silent: the SDK's exporters report a failed
export only through ``logging``, and with the OpenTelemetry logging handler on the root
logger those records go to the OTLP log pipeline, which is down too. And exit is slow: at
exit the SDK shuts its three providers down one after the other, each flushing what it
holds, while the OTLP/HTTP exporter retries a refused connection with backoff (1, 2, 4 s)
until its timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s), a backend that accepts and never
answers holds each request for that whole timeout, and each batch processor waits up to
30 s for its last export (gunicorn took 16-31 s to exit after SIGTERM).

So each exporter the SDK builds is wrapped in a watcher (one per signal) that counts what
failed exports drop and says so on stderr: at the first failure, then at most every
:data:`REPEAT_S` seconds per signal while exports fail, and once when they work again.
At exit, before the SDK's own exit handlers, :func:`shutdown` shuts the providers down
side by side within ``DBPERF_SHUTDOWN_TIMEOUT_MS``: OTLP/HTTP exporters make one attempt
per remaining batch and retry no more, and once the bound has passed what is still being
sent is abandoned (the SDK's export threads are daemons) and counted as dropped. Export
timeouts and retries while the application runs are untouched.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .. import _forksafe
from .._guard import internal_error
from .._sdk_compat import metric_exporter_preferences
from ..settings import Settings
from ._otlp import FastOTLPSpanExporter

REPEAT_S = 300.0  # while exports of a signal keep failing, the line is repeated at most this often
GRACE_S = 0.25  # after the bound: time for exports to notice their exporter was shut down
UNITS = {
    "traces": ("span", "spans"),
    "metrics": ("metric point", "metric points"),
    "logs": ("log record", "log records"),
}

_watches: list[Watch] = []
#: set on a thread while it runs an export that a watch reports on
_exporting = threading.local()
#: the SDK's exporters log under this name; while a watch reports, what they log during its exports is dropped
EXPORTER_LOGGERS = "opentelemetry.exporter"


class QuietWhileWatched(logging.Filter):
    """Drops the records an exporter logs inside a watched export ("Transient error ... retrying",
    "Failed to export ..."): the watch says the same once per signal. What exporters log elsewhere
    (configuration warnings when they are built) passes, and so does everything under
    ``DBPERF_LOG_LEVEL=DEBUG``, which installs no filter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_exporting, "active", False)


_QUIET = QuietWhileWatched()


def quiet_exporter_loggers() -> None:
    """The filter on every logger of the SDK's exporters that exists (they are made when their module is imported)."""
    for name in list(logging.root.manager.loggerDict):
        if name == EXPORTER_LOGGERS or name.startswith(EXPORTER_LOGGERS + "."):
            logger = logging.getLogger(name)
            if _QUIET not in logger.filters:
                logger.addFilter(_QUIET)


class _State:
    """This module's state (the watches above are only appended to)."""

    def __init__(self) -> None:
        self.exit_registered = False  # the bounded flush at exit


_state = _State()


def _count(n: int, signal: str) -> str:
    return f"{n} {UNITS[signal][n != 1]}"


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # closed, or no stderr at all (pythonw)
        pass


def describe_endpoint(exporter: Any) -> str:
    """Where ``exporter`` sends to, without credentials: ``http://host:4318/v1/traces``, a file path, or its type."""
    endpoint = getattr(exporter, "_endpoint", None)
    if isinstance(endpoint, str) and endpoint:
        if "://" not in endpoint:  # host:port (gRPC style)
            return endpoint.rsplit("@", 1)[-1]
        try:
            parts = urlsplit(endpoint)
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return type(exporter).__name__
        return f"{parts.scheme}://{host}{port}{parts.path}"  # no user:password@, query or fragment
    path = getattr(exporter, "path", None)
    return str(path) if path else type(exporter).__name__


class Watch:
    """What the exports of one exporter did: failures, items dropped, and when that was last said."""

    def __init__(self, signal: str, exporter: Any) -> None:
        self.signal = signal
        self.exporter = exporter
        self.endpoint = describe_endpoint(exporter)
        #: a file exporter (a ``path``, no network endpoint): the advice is about the file
        self.to_file = not isinstance(getattr(exporter, "_endpoint", None), str) and bool(getattr(exporter, "path", ""))
        self.lock = _forksafe.lock("backend.watch")
        self.reset()
        _watches.append(self)

    def reset(self) -> None:
        self.failures = 0
        self.dropped = 0
        self.said_at: float | None = None
        self.said_down = False
        self.in_flight: int | None = None  # items of the export under way
        self.closed = False

    def export(self, items: int, call: Callable[[], Any]) -> Any:
        with self.lock:
            self.in_flight = items
        ok = False
        outer = getattr(_exporting, "active", False)
        _exporting.active = True
        try:
            result = call()
            ok = getattr(result, "name", None) == "SUCCESS"
            return result
        finally:
            _exporting.active = outer
            self.finished(ok)

    def finished(self, ok: bool, why: str = "") -> None:
        try:
            with self.lock:
                items, self.in_flight = self.in_flight, None
            if items is None:  # no export under way, or one abandoned at exit and counted then
                return
            if ok:
                self._succeeded()
            else:
                self._failed(items, why)
        except Exception as exc:  # noqa: BLE001
            internal_error("export watch", exc)

    def _failed(self, items: int, why: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.failures += 1
            self.dropped += items
            say = self.said_at is None or now - self.said_at >= REPEAT_S
            if say:
                self.said_at, self.said_down = now, True
            dropped = self.dropped
        if say and getattr(self.exporter, "disabled", False) is not True:  # a disabled exporter said so at start
            advice = (
                "Check that its directory exists and can be written."
                if self.to_file
                else "Check that the backend is up and reachable."
            )
            _say(
                f"otel-dbperf: exports of {self.signal} to {self.endpoint} fail{why}: "
                f"{_count(dropped, self.signal)} dropped so far (process {os.getpid()}; said again at most every "
                f"{REPEAT_S / 60:.0f} minutes while they fail). {advice}"
            )

    def _succeeded(self) -> None:
        with self.lock:
            back, self.said_down = self.said_down, False
            dropped = self.dropped
        if back:
            _say(
                f"otel-dbperf: exports of {self.signal} to {self.endpoint} work again "
                f"(process {os.getpid()}); {_count(dropped, self.signal)} dropped before."
            )

    def stop_retrying(self) -> None:
        """From now on one attempt per export. The OTLP/HTTP exporter ends its retry loop, after the
        attempt under way, once its shutdown event is set: its client's ``_shutdown_event`` from SDK
        1.45 on; before (checked with 1.43 and 1.44), the exporter's own ``_shutdown_in_progress``
        (spans, metrics) or ``_shutdown_is_occuring`` (logs). ``shutdown()`` would also refuse
        every later export. Other exporters are bounded by :func:`shutdown` alone."""
        for owner, name in (
            (getattr(self.exporter, "_client", None), "_shutdown_event"),
            (self.exporter, "_shutdown_in_progress"),
            (self.exporter, "_shutdown_is_occuring"),
        ):
            event = getattr(owner, name, None)
            if isinstance(event, threading.Event):
                event.set()
                return

    def close(self, shutdown: Callable[[], Any]) -> None:
        """The exporter's ``shutdown``, once (at the bound, and again by its processor)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        shutdown()

    def abandon(self) -> None:
        """The flush at exit ran out of time: what is still being sent is dropped."""
        self.finished(False, " (still unanswered when the flush at exit ran out of time)")


class WatchedSpanExporter(SpanExporter):
    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        # otel-dbperf's OTLP encoder sends through the SDK exporter it wraps: that one is watched
        self.watch = Watch("traces", exporter.wrapped if isinstance(exporter, FastOTLPSpanExporter) else exporter)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.watch.export(len(spans), lambda: self._exporter.export(spans))  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        self.watch.close(self._exporter.shutdown)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class WatchedLogExporter(LogRecordExporter):
    def __init__(self, exporter: LogRecordExporter) -> None:
        self._exporter = exporter
        self.watch = Watch("logs", exporter)

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return self.watch.export(len(batch), lambda: self._exporter.export(batch))  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        self.watch.close(self._exporter.shutdown)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


def _points(data: MetricsData) -> int:
    try:
        return sum(
            len(metric.data.data_points)
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        )
    except (AttributeError, TypeError):
        return 1


class WatchedMetricExporter(MetricExporter):
    def __init__(self, exporter: MetricExporter) -> None:
        # the periodic reader takes its temporality and aggregation from the exporter it is given
        super().__init__(*metric_exporter_preferences(exporter))
        self._exporter = exporter
        self.watch = Watch("metrics", exporter)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return self.watch.export(  # type: ignore[no-any-return]
            _points(metrics_data), lambda: self._exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.watch.close(lambda: self._exporter.shutdown(timeout_millis=timeout_millis, **kwargs))


@contextmanager
def watching(settings: Settings) -> Iterator[None]:
    """While the SDK builds its providers: its metric and log exporters are watched.

    ``_init_metrics`` and ``_init_logging`` look ``PeriodicExportingMetricReader`` and
    ``BatchLogRecordProcessor`` up in their module when they call them; for this call only
    those names give the exporter a watcher first (a test pins this to the SDK range we
    support). Span exporters are watched in the export processor factory (``_runtime``).
    Afterwards the bounded flush at exit is registered, to run before the SDK's own.
    """
    if not settings.enabled:
        yield
        return
    from opentelemetry.sdk import _configuration as sdk

    reader_class = sdk.PeriodicExportingMetricReader  # type: ignore[attr-defined]
    log_processor_class = sdk.BatchLogRecordProcessor  # type: ignore[attr-defined]

    def reader(exporter: MetricExporter, *args: Any, **kwargs: Any) -> Any:
        return reader_class(WatchedMetricExporter(exporter), *args, **kwargs)

    def log_processor(exporter: LogRecordExporter, *args: Any, **kwargs: Any) -> Any:
        return log_processor_class(WatchedLogExporter(exporter), *args, **kwargs)

    sdk.PeriodicExportingMetricReader = reader  # type: ignore[attr-defined,assignment]
    sdk.BatchLogRecordProcessor = log_processor  # type: ignore[attr-defined,assignment]
    try:
        yield
    finally:
        sdk.PeriodicExportingMetricReader = reader_class  # type: ignore[attr-defined]
        sdk.BatchLogRecordProcessor = log_processor_class  # type: ignore[attr-defined]
    if settings.log_level != "DEBUG":
        quiet_exporter_loggers()  # the exporters were imported and built just now
    if not _state.exit_registered:
        _state.exit_registered = True
        atexit.register(shutdown, settings.shutdown_timeout_ms / 1000.0)  # runs before the SDK's (LIFO)


def _pending_handlers() -> list[Callable[[], Any]]:
    """The exit handlers of the SDK providers that are still due (a provider the app shut down has none)."""
    from opentelemetry._logs import get_logger_provider
    from opentelemetry.metrics import get_meter_provider
    from opentelemetry.trace import get_tracer_provider

    pending = []
    for provider in (get_logger_provider(), get_meter_provider(), get_tracer_provider()):
        handler = getattr(provider, "_atexit_handler", None) or getattr(provider, "_at_exit_handler", None)
        if callable(handler):
            pending.append(handler)
    return pending


def _run(handler: Callable[[], Any]) -> None:
    try:
        handler()
    except Exception as exc:  # noqa: BLE001
        internal_error("shutdown", exc)


def shutdown(
    budget_s: float, handlers: Sequence[Callable[[], Any]] | None = None, watches: Sequence[Watch] | None = None
) -> None:
    """At exit: the providers' own shutdown (``handlers``), side by side, within ``budget_s`` seconds in all."""
    deadline = time.monotonic() + budget_s
    watches = _watches if watches is None else watches
    for watch in watches:
        watch.stop_retrying()
    if handlers is None:
        handlers = _pending_handlers()
        for handler in handlers:
            atexit.unregister(handler)  # the SDK's own exit handler: it runs here instead
    threads = []
    for handler in handlers:
        thread = threading.Thread(target=_run, args=(handler,), name="otel-dbperf-shutdown", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # Python 3.12.0-3.12.1 start no thread at exit: flush here, unbounded
            _run(handler)
            continue
        threads.append(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        for watch in watches:  # ends the retry waits; an attempt under way keeps its socket timeout
            watch.close(getattr(watch.exporter, "shutdown", lambda: None))
        grace = time.monotonic() + GRACE_S
        for thread in threads:
            thread.join(max(0.0, grace - time.monotonic()))
        for watch in watches:
            watch.abandon()
        _say(
            f"otel-dbperf: the flush at exit stopped after {budget_s:g} s (DBPERF_SHUTDOWN_TIMEOUT_MS) "
            f"with exports still under way (process {os.getpid()}); what they held is dropped."
        )
    totals: dict[str, int] = {}
    for w in watches:  # one total per signal (a process may have watched several exporters of one)
        if w.dropped:
            totals[w.signal] = totals.get(w.signal, 0) + w.dropped
    dropped = [_count(n, signal) for signal, n in totals.items()]
    if dropped:
        _say(f"otel-dbperf: process {os.getpid()} exits; failed exports dropped {', '.join(dropped)} in all.")


def _after_fork_in_child() -> None:
    for watch in _watches:  # each process says and counts its own (the locks: renewed by _forksafe)
        watch.reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
