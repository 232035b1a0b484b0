"""Every use of an OpenTelemetry SDK or contrib name that is not public API, in one place.

Each entry says what it reads or writes, why, and the releases it was checked against
(:data:`CHECKED`); ``tests/test_sdk_compat.py`` fails when the installed releases are
outside them, and :func:`span_layout_ok` is checked once at startup: on an SDK whose span
no longer has the fields the request-thread hooks read, otel-dbperf turns itself off with
one warning instead of failing in every hook.

The request-thread hooks read these SDK ``Span`` fields inline, not through a function here,
because each call costs instructions on every DB span (the exceptions by name, which
``tests/test_reqcost_sdk_access.py`` allows and nothing else): ``DbPerfSpanProcessor.on_start``
reads ``_context`` (indexed: SpanContext is a tuple ``(trace_id, span_id, is_remote, ...)``),
``_parent``, ``_kind`` and ``_instrumentation_scope``; ``DbPerfSpanProcessor._on_ending`` reads
``_context`` and ``_status`` (and a request root's ``_start_time`` and ``_end_time``: its duration);
``DbPerfSpanProcessor._end_query`` reads ``_attributes._dict`` (the plain dict inside
``BoundedAttributes``), ``_start_time``, ``_end_time`` and ``_status``;
``DbPerfSpanProcessor.open_query`` and the duplicates listener ``_after_cursor_execute`` read
``_context`` (the second also contrib's :data:`CONTRIB_QUERY_SPAN`, by its name from here). The
hooks run inside the SDK's ``Span.end``, called from
the instrumentation's code: the code-location walk starts at the hook's caller and climbs
(under ``ConcurrentMultiSpanProcessor`` the hooks run on a pool thread: no code location, and
per-query CPU time is that thread's; ``opentelemetry-instrument`` never uses it).
The export-thread half (``_pipeline.enrich``) reads ``ReadableSpan``'s fields through
:func:`span_id_of`, :func:`attributes_of`, :func:`events_of`, :func:`status_of`, :func:`name_of`
and :func:`times_of` (its properties copy: ``events`` builds a tuple, ``attributes`` a proxy) and,
through :func:`with_changes`, writes ``_name``, ``_attributes``, ``_events`` and ``_status``. The
OTLP encoder's per-span reads (``SpanEncoder.span``: ``_attributes``, ``_events``, ``_links``, only
when the span's class overrides none of their properties) stay inline for the same reason as the
request thread's (a call per read, per span); the test allows them by name.
Here too: ``exporters._otlp``'s :func:`otlp_export_parts` and :func:`otlp_exporter_shut_down`,
``_prefork``'s :func:`renew_sampled_process` (``SystemMetricsInstrumentor._instance._proc``),
``exporters._watch``'s :func:`metric_exporter_preferences`, ``_sqlite3``'s :func:`db_api_integration_of`,
``_logs``'s :func:`wrap_log_handler_translate`, ``_sqla.instrument``'s :func:`replace_instrumentor_hooks`,
``distro``'s :func:`comment_once_in_dbapi` (contrib DB-API's module global ``_add_sql_comment``).
Elsewhere still, by ``getattr`` with a default: ``exporters._watch`` (the providers' ``_atexit_handler``)
and ``_sqla.instrument`` (contrib's module ``_w``), each commented where used.
``_pipeline.contrib_metrics`` replaces contrib DB-API's ``CursorTracer._record_metrics`` (a
request-thread hook with contrib's signature) and reads what it recorded through the functions below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Status, StatusCode

from . import _forksafe

#: the releases every access below (and those listed in docs/design.md "Private SDK access") was
#: checked against, inclusive: the ends of ``scripts/test-matrix`` and the ranges of pyproject.toml
_SDK = ("1.44.0", "1.45.1")
_CONTRIB = ("0.65b0", "0.66b1")  # released with SDK 1.44.0 and 1.45.1
CHECKED: dict[str, tuple[str, str]] = {
    "opentelemetry-api": _SDK,
    "opentelemetry-sdk": _SDK,
    "opentelemetry-exporter-otlp-proto-http": _SDK,
    "opentelemetry-instrumentation": _CONTRIB,
    "opentelemetry-instrumentation-sqlalchemy": _CONTRIB,
    "opentelemetry-instrumentation-dbapi": _CONTRIB,
    "opentelemetry-instrumentation-sqlite3": _CONTRIB,
    "opentelemetry-instrumentation-system-metrics": _CONTRIB,
}


# ---- spans -------------------------------------------------------------------------------
def span_layout_ok() -> bool:
    """Whether this SDK's spans have the fields the request-thread hooks read (see the module doc)."""
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    try:
        span: Any = provider.get_tracer("otel_dbperf.check").start_span("check", attributes={"a": 1})
        span.end()
        context = span._context  # noqa: SLF001
        return (
            context[1] == span.get_span_context().span_id
            and span._parent is None  # noqa: SLF001
            and span._kind is span.kind  # noqa: SLF001
            and span._instrumentation_scope is span.instrumentation_scope  # noqa: SLF001
            and span._attributes._dict == {"a": 1}  # noqa: SLF001
            and isinstance(span._start_time, int)  # noqa: SLF001
            and isinstance(span._end_time, int)  # noqa: SLF001
            and span._status is span.status  # noqa: SLF001
        )
    except Exception:  # noqa: BLE001 - any difference means: not the layout we know
        return False
    finally:
        provider.shutdown()


def attr_dict(attrs: Any) -> Mapping[str, Any]:
    """The plain dict behind the SDK's ``BoundedAttributes`` (read-only use), else the mapping."""
    inner = getattr(attrs, "_dict", None)
    return inner if isinstance(inner, dict) else (attrs or {})


def bounded(attrs: dict[str, Any], original: Any) -> BoundedAttributes:
    """``attrs`` as the SDK's attribute type, keeping the original's dropped count and length limit.

    Built without the SDK's per-value validation (``_dict``, ``_immutable``): the values
    otel-dbperf adds are valid by construction, and the others were validated when the span
    set them.
    """
    result = BoundedAttributes(immutable=False)
    maxlen = getattr(original, "maxlen", None)
    dropped = getattr(original, "dropped", 0)
    if maxlen is not None and len(attrs) > maxlen:  # the span's attribute limit also bounds ours
        for key in list(attrs)[maxlen:]:
            del attrs[key]
            dropped += 1
    result._dict = attrs  # noqa: SLF001
    result.maxlen = maxlen
    result.dropped = dropped
    result._immutable = True  # noqa: SLF001
    return result


def with_changes(
    span: ReadableSpan,
    in_place: bool,
    name: str | None,
    attributes: BoundedAttributes,
    events: Sequence[Event],
    status: Status,
) -> ReadableSpan:
    """``span`` with a new name (None: kept), attributes, events and status.

    ``in_place``: the ``ReadableSpan`` snapshot the SDK made for ``on_end`` is updated (one
    exporter: no copy on the export path); else a copy (several exporters each get their own).
    """
    if in_place:
        if name is not None:
            span._name = name  # noqa: SLF001
        span._attributes = attributes  # noqa: SLF001
        span._events = events  # type: ignore[assignment]  # noqa: SLF001
        span._status = status  # noqa: SLF001
        return span
    return ReadableSpan(
        name=span.name if name is None else name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def default_span_status() -> Any:
    """The ``Status`` object an SDK span holds while none was set: the default of ``ReadableSpan``'s
    ``status`` parameter, one shared object, which ``Span`` never passes. A status that is not this
    object is read as before (``status.status_code``), so another SDK loses nothing but the shortcut."""
    import inspect

    parameter = inspect.signature(ReadableSpan.__init__).parameters.get("status")
    default = getattr(parameter, "default", None)
    return default if isinstance(default, Status) and default.status_code is StatusCode.UNSET else object()


def span_id_of(span: Any) -> int | None:
    """``span``'s span id (``span._context[1]``, SpanContext being a tuple), or None for a span
    without one (the API's non-recording span has its context elsewhere)."""
    context = getattr(span, "_context", None)
    return None if context is None else context[1]  # type: ignore[no-any-return]


# The export thread's reads of a ``ReadableSpan`` (its properties copy: ``events`` builds a tuple,
# ``attributes`` a proxy); one call each, off the request thread.
def attributes_of(span: ReadableSpan) -> Any:
    """``span._attributes``: the ``BoundedAttributes`` itself (read with :func:`attr_dict`)."""
    return span._attributes  # noqa: SLF001


def events_of(span: ReadableSpan) -> Sequence[Event]:
    """``span._events``, not copied."""
    return span._events  # noqa: SLF001


def status_of(span: ReadableSpan) -> Status:
    """``span._status``."""
    return span._status  # noqa: SLF001


def name_of(span: ReadableSpan) -> Any:
    """``span._name``."""
    return span._name  # noqa: SLF001


def times_of(span: ReadableSpan) -> tuple[Any, Any]:
    """(``span._start_time``, ``span._end_time``): ns, or None when not set."""
    return span._start_time, span._end_time  # noqa: SLF001


#: the attribute of SQLAlchemy's execution context where contrib's SQLAlchemy instrumentation keeps the
#: query's span (set in its ``before_cursor_execute``, ended in ``after_cursor_execute``)
CONTRIB_QUERY_SPAN = "_otel_span"


def contrib_query_span(execution_context: Any) -> Any:
    """The span contrib's SQLAlchemy instrumentation opened for a query (``context._otel_span``), or None.
    (``_duplicates`` reads :data:`CONTRIB_QUERY_SPAN` itself: one call less per query.)"""
    return getattr(execution_context, CONTRIB_QUERY_SPAN, None)


# ---- metrics -----------------------------------------------------------------------------
def records_instrument(provider: Any, name: str, except_scope: str) -> bool:
    """Whether a meter of another scope than ``except_scope`` created the instrument ``name``
    (``MeterProvider._meters``, ``Meter._instrument_id_instrument``)."""
    for scope, meter in list(getattr(provider, "_meters", {}).items()):
        if getattr(scope, "name", "") == except_scope:
            continue
        for instrument in list(getattr(meter, "_instrument_id_instrument", {}).values()):
            if getattr(instrument, "name", "") == name:
                return True
    return False


def is_sdk_meter_provider(provider: Any) -> bool:
    """The SDK's ``MeterProvider`` (not the API's no-op or proxy, nor another vendor's)."""
    return hasattr(provider, "_measurement_consumer")


def reset_metric_storages(provider: Any) -> None:
    """Forget the measurements inherited from a forked parent: each reader gets a new, empty
    storage (``_measurement_consumer._reader_storages``, ``MetricReaderStorage``), and the
    consumer a new lock (the parent's may have been held by its exporter thread)."""
    from opentelemetry.sdk.metrics._internal.metric_reader_storage import MetricReaderStorage

    consumer = getattr(provider, "_measurement_consumer", None)
    storages = getattr(consumer, "_reader_storages", None)
    if consumer is None or storages is None:
        return
    consumer._lock = _forksafe.lock("sdk.measurement_consumer")  # noqa: SLF001
    consumer._reader_storages = {  # noqa: SLF001
        reader: MetricReaderStorage(
            provider._sdk_config,  # noqa: SLF001
            reader._instrument_class_temporality,  # noqa: SLF001
            reader._instrument_class_aggregation,  # noqa: SLF001
        )
        for reader in storages
    }


def reset_export_locks(provider: Any) -> None:
    """Fresh export locks for a forked child's periodic readers (``_metric_readers``,
    ``PeriodicExportingMetricReader._export_lock``): the SDK restarts a reader's thread in the child
    but keeps its lock, which the parent's thread holds while it exports; a fork at that moment
    (a Celery prefork pool starting its children while the master exports) left the child's reader
    waiting on it forever, and the child's metrics were never exported."""
    for reader in getattr(provider, "_metric_readers", None) or ():
        if hasattr(reader, "_export_lock"):
            reader._export_lock = _forksafe.lock("sdk.reader_export")  # noqa: SLF001


def meter_readers(provider: Any) -> Sequence[Any] | None:
    """The metric readers of the SDK's ``MeterProvider`` (``_metric_readers``: fixed when it is
    built), or None for another provider."""
    readers = getattr(provider, "_metric_readers", None) if is_sdk_meter_provider(provider) else None
    return tuple(readers) if readers is not None else None


# ---- contrib's DB-API metrics (``_pipeline/contrib_metrics.py``) --------------------------
def dbapi_cursor_tracer_class() -> Any:
    """``opentelemetry.instrumentation.dbapi.CursorTracer``, whose ``_record_metrics(self, cursor,
    operation_name, start_time, error)`` records contrib's two per-query histograms (called by
    ``traced_execution`` and ``traced_execution_async`` in a ``finally``, inside the query's span);
    None without contrib's DB-API instrumentation."""
    from importlib.util import find_spec

    if find_spec("opentelemetry.instrumentation.dbapi") is None:
        return None
    from opentelemetry.instrumentation.dbapi import CursorTracer

    return CursorTracer


def db_semconv_stable() -> bool:
    """Whether contrib reports the stable database conventions (its metrics exist only then):
    ``_semconv._OpenTelemetrySemanticConventionStability``'s mode for DATABASE, as each DB-API
    integration reads it when it is made."""
    from opentelemetry.instrumentation._semconv import (
        _OpenTelemetrySemanticConventionStability,
        _OpenTelemetryStabilitySignalType,
        _report_new,
    )

    _OpenTelemetrySemanticConventionStability._initialize()  # type: ignore[no-untyped-call]  # noqa: SLF001
    mode = _OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode(  # noqa: SLF001
        _OpenTelemetryStabilitySignalType.DATABASE
    )
    return bool(_report_new(mode))


def contrib_db_histograms(tracer: Any) -> tuple[Any, Any]:
    """A cursor tracer's ``_db_api_integration._duration_histogram`` and ``_returned_rows_histogram``
    (None without the database opt-in)."""
    integration = tracer._db_api_integration  # noqa: SLF001
    return integration._duration_histogram, integration._returned_rows_histogram  # noqa: SLF001


def contrib_metric_attributes(tracer: Any, operation_name: str, error_type: type | None) -> dict[str, Any]:
    """The attributes contrib gives both histograms (``CursorTracer._get_metric_attributes``), for
    an error of class ``error_type``: contrib's ``error.type`` is ``type(error).__qualname__``."""
    attributes: dict[str, Any] = tracer._get_metric_attributes(operation_name, None)  # noqa: SLF001
    if error_type is not None:
        attributes["error.type"] = error_type.__qualname__
    return attributes


def metric_exporter_preferences(exporter: Any) -> tuple[Any, Any]:
    """(``exporter._preferred_temporality``, ``exporter._preferred_aggregation``): what a periodic reader
    takes from the exporter it is given (``_backend`` wraps metric exporters and passes them on)."""
    return exporter._preferred_temporality, exporter._preferred_aggregation  # noqa: SLF001


def renew_sampled_process(instrumentor_class: Any) -> None:
    """In a forked worker: contrib's ``SystemMetricsInstrumentor`` (its singleton ``_instance``: calling
    the class would re-run ``__init__``) samples ``_proc``, the ``psutil.Process`` of the process that
    instrumented; this makes it the worker's own (when set)."""
    instrumentor: Any = getattr(instrumentor_class, "_instance", None)
    if getattr(instrumentor, "_proc", None) is not None:
        import os

        import psutil

        instrumentor._proc = psutil.Process(os.getpid())  # noqa: SLF001


# ---- contrib's DB-API instrumentation ------------------------------------------------------
def db_api_integration_of(proxy: Any) -> Any:
    """The ``DatabaseApiIntegration`` behind contrib's ``TracedConnectionProxy``
    (``proxy._self_db_api_integration``, a wrapt proxy field), or None."""
    return proxy._self_db_api_integration  # noqa: SLF001


def contrib_connect_original(connect: Any) -> Any:
    """The driver's own ``connect`` behind contrib's DB-API connection wrapper (``dbapi.wrap_connect``:
    a wrapt ``FunctionWrapper`` whose wrapper, ``_self_wrapper``, is contrib's), or None when ``connect``
    is not wrapped by an OpenTelemetry instrumentation (another wrapper is never stepped over)."""
    wrapper = getattr(connect, "_self_wrapper", None)
    if wrapper is None or not str(getattr(wrapper, "__module__", "")).startswith("opentelemetry.instrumentation."):
        return None
    return getattr(connect, "__wrapped__", None)


# ---- the OTLP/HTTP span exporter (``exporters/_otlp.py``) ---------------------------------
def otlp_export_parts(exporter: Any) -> tuple[Any, Any, int] | None:
    """``(exporter._client, exporter._metrics, exporter._max_request_size)`` of exactly the SDK's
    ``OTLPSpanExporter`` when everything ``FastOTLPSpanExporter`` uses is there, else None.

    Checked against opentelemetry-exporter-otlp-proto-http 1.45.1, whose ``export()`` is: refuse
    after shutdown (``_shutdown``), one ``_metrics.export_operation(len(spans))`` around the
    encoding, a size check (``_common._is_request_too_large`` against ``_max_request_size``) and
    ``_client.export(bytes)`` (compression, headers, session, retries, backoff), whose result says
    success, status code and error. A subclass may override ``export``: None; 1.44 has no ``_client``:
    None (the stock path).
    """
    try:
        from opentelemetry.exporter.otlp.proto.http import _common
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        return None
    if type(exporter) is not OTLPSpanExporter:
        return None
    client = getattr(exporter, "_client", None)
    metrics = getattr(exporter, "_metrics", None)
    limit = getattr(exporter, "_max_request_size", None)
    if (
        callable(getattr(client, "export", None))
        and callable(getattr(metrics, "export_operation", None))
        and isinstance(limit, int)
        and isinstance(getattr(exporter, "_shutdown", None), bool)
        and callable(getattr(_common, "_is_request_too_large", None))
    ):
        return client, metrics, limit
    return None


def otlp_exporter_shut_down(exporter: Any) -> bool:
    """``exporter._shutdown`` of an exporter :func:`otlp_export_parts` accepted."""
    return exporter._shutdown  # type: ignore[no-any-return]  # noqa: SLF001


# ---- the SDK's logging handler (``_logs.py``) ----------------------------------------------
def wrap_log_handler_translate(handler: Any, wrap: Callable[[Any], Any]) -> None:
    """Replace the SDK ``LoggingHandler``'s ``_translate(record)`` (the record to the OTLP log record
    it emits) on this handler with ``wrap(original)``."""
    handler._translate = wrap(handler._translate)  # noqa: SLF001


# ---- contrib's SQLAlchemy instrumentor (``_sqla/instrument.py``) ---------------------------
def instrumentor_hooks_replaced(instrumentor: Any) -> bool:
    """Whether this instrumentor object already has its own ``_instrument`` (set by
    :func:`replace_instrumentor_hooks`)."""
    return "_instrument" in vars(instrumentor)


def class_instrument_hook(instrumentor: Any) -> Callable[..., Any]:
    """The instrumentor class's ``_instrument(self, **kwargs)`` (what ``instrument()`` calls)."""
    return type(instrumentor)._instrument  # type: ignore[no-any-return]  # noqa: SLF001


def replace_instrumentor_hooks(
    instrumentor: Any, instrument: Callable[..., Any], uninstrument: Callable[..., Any]
) -> None:
    """Give this instrumentor object its own ``_instrument(**kwargs)`` and ``_uninstrument(**kwargs)``
    (``BaseInstrumentor.instrument``/``uninstrument`` call them)."""
    instrumentor._instrument = instrument  # noqa: SLF001
    instrumentor._uninstrument = uninstrument  # noqa: SLF001


# ---- sqlcommenter: one traceparent per statement (``distro``) ---------------------------------
def comment_once_in_dbapi() -> None:
    """Contrib DB-API's ``_add_sql_comment`` (a module global, looked up per statement) leaves a
    statement that already carries a ``traceparent`` alone: under SQLAlchemy with the psycopg
    instrumentation too, the ORM's comment is the one the server sees (the driver's span is nested
    in the ORM's, same trace), not two comments. Idempotent; nothing without contrib's DB-API."""
    from importlib.util import find_spec

    if find_spec("opentelemetry.instrumentation.dbapi") is None:
        return
    import opentelemetry.instrumentation.dbapi as dbapi

    original = dbapi._add_sql_comment  # type: ignore[attr-defined]  # noqa: SLF001
    if getattr(original, "_dbperf_once", False):
        return

    def add_sql_comment(sql: Any, **meta: Any) -> Any:
        if isinstance(sql, str) and "traceparent=" in sql:
            return sql
        return original(sql, **meta)

    add_sql_comment._dbperf_once = True  # type: ignore[attr-defined]
    dbapi._add_sql_comment = add_sql_comment  # type: ignore[attr-defined]  # noqa: SLF001


# ---- the SDK's configuration -------------------------------------------------------------
@contextmanager
def replaced(module: Any, name: str, make: Any) -> Iterator[None]:
    """While the SDK's ``_configuration`` builds its providers, the name ``name`` it looks up in
    its module at call time (``MeterProvider``, ``PeriodicExportingMetricReader``,
    ``BatchLogRecordProcessor``) is ``make(original)``; restored afterwards."""
    original = getattr(module, name)
    setattr(module, name, make(original))
    try:
        yield
    finally:
        setattr(module, name, original)


def exporter_entry_point_name(name: str, signal: str) -> str:
    """The entry point the SDK resolves an ``OTEL_*_EXPORTER`` name to (``otlp`` and the OTLP
    protocol variables); raises RuntimeError for an unsupported protocol."""
    from opentelemetry.sdk import _configuration as sdk_configuration

    return sdk_configuration._get_exporter_entry_point(name, signal)  # type: ignore[attr-defined,arg-type,no-any-return]
