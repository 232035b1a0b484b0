"""How a query's data travels, in one package (read this first).

::

    request thread                     export thread(s)                  derivation thread
    --------------                     ----------------                  -----------------
    processor.DbPerfSpanProcessor
      on_start: Query / Request  ---.
      on_end:   measure once        |
        publish(span_id, payload) --+--> enrich.EnrichingSpanExporter
                                    |      span attributes, events
        submit(span, payload) ------+-----------------------------------> derive.SpanDeriver
                                                                            -> Sink.query / Sink.request
                                                                               metrics_sink.MetricsSink
                                                                               slowlog.SlowQueryLog
                                                                               profiler.sink.HistorySink

- :mod:`.record`: what travels. A DB span's :class:`Query` (built on the request thread;
  other hooks that run while the span is open write into it: ``_sqla.duplicates`` its
  parameters' digest, ``_sqla.explain`` its plan), a local root's :class:`Request`, and the
  :class:`Thresholds` every stage judges by. Analysis happens once, off the request thread,
  by whichever consumer asks first: :meth:`Query.analysis` (fingerprint, summary, sanitized
  text) and :meth:`Request.rollup` (counts, duplicates, the N+1 verdict).
- :mod:`.processor`: the request-thread half (the only code on the app's hot path).
- :mod:`.enrich`: the span attributes (design.md section 4), on the export thread.
- :mod:`.derive`: the queue and thread that feed the sinks (:mod:`.sink`: all a sink is asked);
  :mod:`.metrics_sink`: section 5; :mod:`.slowlog`: the slow-query log records (with :mod:`.pending`,
  :mod:`.route`, :mod:`.suggest`, shared with the profiler's sink).
- :mod:`.location`: the frame walk to the application code (request thread).
- :mod:`.contrib_metrics`: contrib's per-query DB-API metrics, queued on the request thread and
  recorded by the derivation thread's drains.

``_runtime`` builds all of it from the settings; ``_sdk_compat`` holds every SDK internal it uses.
"""

from .derive import SpanDeriver
from .enrich import EnrichingSpanExporter
from .processor import DbPerfSpanProcessor
from .record import Query, Request, Rollup, Thresholds
from .sink import Sink

__all__ = [
    "DbPerfSpanProcessor",
    "EnrichingSpanExporter",
    "Query",
    "Request",
    "Rollup",
    "Sink",
    "SpanDeriver",
    "Thresholds",
]
