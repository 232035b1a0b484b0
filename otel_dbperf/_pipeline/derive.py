"""The derivation thread: every finished DB span and request root, analysed once, fanned out to the sinks.

The request thread only appends ``(span, Query or Request)`` to a bounded queue (one
``deque.append``). A background thread drains it every half second, and so does every
metric collection (an observable callback), so an export or a scrape sees every span that
ended before it. A drain takes the spans queued when it starts: a producer faster than
the sinks never keeps it (nor a collection waiting on it) going. Past :data:`MAX_QUEUE`
spans, new ones are dropped and counted (``dbperf.metrics.dropped``). Lock order: a drain holds
the deriver's lock while a request is analysed under ``record.ANALYSIS_LOCK``, never the reverse.

A sink (:class:`Sink`) gets each query with its analysis made, and each request with its
:class:`~.record.Rollup` and route: the metrics (:mod:`.metrics_sink`), the slow-query log
(``_slowlog``), the profiler's history (``profiler.sink``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.trace import ReadableSpan

from .. import _forksafe
from .. import metric_names as M
from .._guard import internal_error
from .._nosql import KIND_QUERY
from . import route as _route
from .record import Query, Request, Thresholds
from .sink import Sink

_log = logging.getLogger("otel_dbperf")
MAX_QUEUE = 100_000  # spans awaiting derivation; past it they are dropped and counted
DRAIN_INTERVAL_S = 0.5
EXIT_DRAIN_S = 2.0  # at exit the queue is drained for at most this long; the rest is dropped and counted


def route_of(span: ReadableSpan) -> str:
    """What names a request in reports and metrics: ``http.route`` (web requests), a Celery
    task's ``celery.task_name``, else ""."""
    return _route.route_of(span.attributes or {})


class SpanDeriver:
    def __init__(self, thresholds: Thresholds, sinks: Sequence[Sink] = (), meter: Meter | None = None) -> None:
        """``meter``: where ``dbperf.metrics.dropped`` is reported (its collection drains the queue first)."""
        self._thresholds = thresholds
        self._sinks = tuple(sinks)
        self.queue: deque[tuple[Any, Any]] = deque()
        self.dropped = 0
        self._lock = _forksafe.lock("derive.drain")  # one drainer at a time keeps per-request order simple
        self._start_lock = _forksafe.lock("derive.start")
        self._needs_thread = True  # started by the first submit (again in a forked child)
        self._also: tuple[Callable[[], None], ...] = ()  # other queues drained with this one
        self.metrics: Any = None  # the MetricsSink among the sinks, if any (see build_deriver)
        if meter is not None:
            meter.create_observable_counter(
                M.METRICS_DROPPED.name,
                callbacks=[self._collect],
                unit="{span}",
                description="Spans whose metrics were dropped because the derivation queue was full.",
            )

    def also_drain(self, drain: Callable[[], None]) -> None:
        """Call ``drain()`` at each drain, after the spans (under the same lock): another queue of
        measurements deferred from the request thread (``contrib_metrics``)."""
        self._also = (*self._also, drain)

    # ---- request thread -------------------------------------------------------------------
    def submit(self, span: Any, payload: Any) -> None:
        """Queue a finished span (called by the processor; must stay cheap)."""
        if self._needs_thread:
            self._start()
        queue = self.queue
        if len(queue) < MAX_QUEUE:
            queue.append((span, payload))
        else:
            self.dropped += 1

    # ---- background ----------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._needs_thread:
                threading.Thread(target=self._run, name="otel-dbperf-derive", daemon=True).start()
                self._needs_thread = False

    def after_fork_in_child(self) -> None:
        """A forked child (its locks renewed by :mod:`.._forksafe`): the parent's queued spans
        forgotten (they are the parent's), our thread started again on first use; the sinks forget
        the parent's too."""
        self.queue.clear()
        self.dropped = 0
        self._needs_thread = True
        for sink in self._sinks:
            sink.after_fork_in_child()

    def _run(self) -> None:
        while True:
            time.sleep(DRAIN_INTERVAL_S)
            self.drain()

    def _collect(self, options: CallbackOptions) -> Iterable[Observation]:
        self.drain()
        yield Observation(self.dropped)

    def drain_at_exit(self) -> None:
        """At interpreter exit: drain for at most :data:`EXIT_DRAIN_S`, then drop what is left
        (counted in ``dbperf.metrics.dropped`` and said once on the log) so exit is never held up."""
        self.drain(time.monotonic() + EXIT_DRAIN_S)
        left = len(self.queue)
        if left:
            self.queue.clear()
            self.dropped += left
            _log.warning(
                "otel-dbperf: exit: the metrics of %d spans were dropped (derivation is bounded to %.0f s at exit)",
                left,
                EXIT_DRAIN_S,
            )

    def drain(self, deadline: float | None = None) -> None:
        """Derive the spans queued now (until ``deadline``, a ``time.monotonic()``)."""
        if deadline is None:
            lock_ok = self._lock.acquire()
        else:
            lock_ok = self._lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
        if not lock_ok:
            return
        try:
            queue = self.queue
            for _ in range(len(queue)):
                if deadline is not None and time.monotonic() >= deadline:
                    return
                try:
                    span, payload = queue.popleft()
                except IndexError:
                    return
                try:
                    if payload.__class__ is Query:
                        self._query(span, payload)
                    else:
                        self._request(span, payload)
                except Exception as exc:  # noqa: BLE001
                    internal_error("derive", exc)
            for also in self._also:
                try:
                    also()
                except Exception as exc:  # noqa: BLE001
                    internal_error("derive", exc)
        finally:
            self._lock.release()

    def discard(self) -> None:
        """Drop the spans queued now, underived (once a drain under way has ended): the pytest guard at
        a test's start, whose sink keeps only the test's own queries."""
        with self._lock:
            self.queue.clear()

    def _query(self, span: Any, query: Query) -> None:
        query.analysis(self._thresholds.statement_max_length)
        call = query.kind != KIND_QUERY  # a key-value store's call: for the sinks that take calls
        for sink in self._sinks:
            if call and not sink.takes_calls:
                continue
            try:
                sink.query(span, query)
            except Exception as exc:  # noqa: BLE001 - one sink's bug must not stop the others
                internal_error("sink", exc)

    def _request(self, span: Any, request: Request) -> None:
        rollup = request.rollup(self._thresholds)
        route = route_of(span)
        for sink in self._sinks:
            try:
                sink.request(span, request, rollup, route)
            except Exception as exc:  # noqa: BLE001
                internal_error("sink", exc)


def build_deriver(
    thresholds: Thresholds, meter_provider: Any = None, sinks: Sequence[Sink] = (), version: str = ""
) -> SpanDeriver:
    """The deriver with the metrics sink first when ``meter_provider`` is given, then ``sinks``."""
    if meter_provider is None:
        return SpanDeriver(thresholds, sinks)
    from ..metrics import METER_NAME
    from .metrics_sink import MetricsSink

    meter = meter_provider.get_meter(METER_NAME, version)
    metrics = MetricsSink(meter, meter_provider, METER_NAME)
    deriver = SpanDeriver(thresholds, [metrics, *sinks], meter)
    deriver.metrics = metrics
    return deriver
