"""``otel-dbperf report``: a slow-query report from OTLP JSON lines.

Reads our ``otlp_json_file`` output and the Collector's file exporter format
alike, streaming line by line in bounded memory: per-fingerprint statistics keep
a fixed-size sample for percentiles, and the maps that attribute queries to
routes are bounded LRUs. Corrupt or truncated lines are counted, never fatal;
a span that cannot be read is counted apart and costs no other span of its line: a field or attribute
that is not valid OTLP JSON, or an attribute the report reads with the wrong type (``ATTRIBUTE_TYPES``).
Enum fields are read as protobuf's JSON mapping allows: by name
(``"SPAN_KIND_SERVER"``, as protobuf JSON printers write them) or by number.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import random
import re
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from .. import attributes as A
from .._pipeline.route import CELERY_TASK_NAME, HTTP_ROUTE, route_of
from .console import FileProgress
from .markup import printable_data
from .server import ServerStats, render_lines
from .workload import render_columns as server_columns
from .workload import render_full_scans as full_scan_lines
from .workload import render_lines as server_lines

_SAMPLES = 512  # durations kept per fingerprint for percentiles (reservoir sampling)
_MAX_KEYS = 20  # distinct code locations / routes kept per fingerprint
_MAX_FINDINGS = 1000  # distinct request findings (finding, route, location, detail) kept
_MAX_TRACES = 200_000  # traces remembered to attribute queries to their request's route
_SERVER = 2  # SpanKind SERVER in OTLP
_MAX_REASONS = 5  # rejected lines and spans whose reason is kept
_MAX_REASON_CHARS = 300
_INT64 = (-(2**63), 2**63 - 1)  # AnyValue.int_value
_MAX_NS = 2**64 - 1  # the timestamps are fixed64 nanoseconds
_MAX_ARRAY_DEPTH = 8  # arrays in arrays in attribute values (OpenTelemetry's SDKs write none)
# What reading a line or a span may raise: counted and skipped, never fatal
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError)
# The OTLP enums the reader uses, by protobuf name (opentelemetry/proto/trace/v1/trace.proto)
SPAN_KINDS = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _enum(value: Any, names: dict[str, int], field_name: str) -> int:
    """An enum field as protobuf JSON parsers read it: its name, its number, or its number as a string."""
    if value is None:
        return 0
    if isinstance(value, bool):  # a JSON true is not an enum
        raise ValueError(f"{field_name} {value!r} is not a name or a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        if value in names:
            return names[value]
        try:
            return int(value)
        except ValueError:
            pass
    raise ValueError(f"{field_name} {value!r} is not one of {', '.join(names)} or a number")


def _show(value: Any) -> str:
    """A value in a reason: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any, what: str, low: int, high: int) -> int:
    """An integer field as protobuf's JSON mapping writes it: a number or a decimal string."""
    if value is None:
        return 0
    if isinstance(value, str):
        number = int(value)  # its ValueError says why
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():  # NaN and infinities are not
        number = int(value)
    else:
        raise ValueError(f"{what} {_show(value)} is not an integer")
    if not low <= number <= high:
        raise ValueError(f"{what} {_show(value)} is out of range")
    return number


def _double(value: Any) -> float:
    """A double as protobuf's JSON mapping writes it: a number, or a string ("NaN", "Infinity", "1.5")."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except (ValueError, OverflowError):
            pass
    raise ValueError(f"doubleValue {_show(value)} is not a number")


def _value(v: Any, depth: int = 0) -> Any:
    """An AnyValue: a malformed one makes its span unreadable."""
    if not isinstance(v, dict):
        raise ValueError(f"value {_show(v)} is not an AnyValue object")
    if "stringValue" in v:
        text = v["stringValue"]
        if not isinstance(text, str):
            raise ValueError(f"stringValue {_show(text)} is not a string")
        return text
    if "intValue" in v:
        return _int(v["intValue"], "intValue", *_INT64)
    if "doubleValue" in v:
        return _double(v["doubleValue"])
    if "boolValue" in v:
        flag = v["boolValue"]
        if not isinstance(flag, bool):
            raise ValueError(f"boolValue {_show(flag)} is not true or false")
        return flag
    if "arrayValue" in v:
        if depth >= _MAX_ARRAY_DEPTH:
            raise ValueError(f"arrayValue nested more than {_MAX_ARRAY_DEPTH} deep")
        array = v["arrayValue"]
        if not isinstance(array, dict):
            raise ValueError(f"arrayValue {_show(array)} is not an object")
        return [_value(x, depth + 1) for x in _list(array.get("values"), "arrayValue.values")]
    return None


def _attrs(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in _list(items, "attributes"):
        if not isinstance(kv, dict):
            raise ValueError(f"attribute {_show(kv)} is not an object")
        if "key" not in kv:
            continue
        key = kv["key"]
        if not isinstance(key, str):
            raise ValueError(f"attribute key {_show(key)} is not a string")
        try:
            out[key] = _value(kv.get("value", {}))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{key}: {exc}") from None
    return out


_STRING, _FLAG, _COUNT = "a string", "true or false", "a whole number, 0 or more"
_MS = "milliseconds: a finite number, 0 to 2^64 ns"
# Every attribute the report reads, and its type: a span where one has another is rejected
ATTRIBUTE_TYPES = {
    **dict.fromkeys(
        (A.QUERY_FINGERPRINT, A.DB_QUERY_SUMMARY, A.DB_QUERY_TEXT, A.DB_STATEMENT, A.CODE_FILE_PATH,
         HTTP_ROUTE, CELERY_TASK_NAME, A.N_PLUS_ONE_FINGERPRINT, A.N_PLUS_ONE_QUERY_SUMMARY,
         A.N_PLUS_ONE_CODE_LOCATION, A.N_PLUS_ONE_PYTHON_LOCATION, A.N_PLUS_ONE_RELATIONSHIP,
         A.N_PLUS_ONE_SUGGESTION, A.NOSQL_REPEAT_SYSTEM, A.NOSQL_REPEAT_OPERATION, A.NOSQL_REPEAT_CODE_LOCATION,
         A.NOSQL_REPEAT_SUGGESTION, A.REQUEST_CPU_BOUND_CODE_LOCATION, A.REQUEST_CPU_BOUND_FUNCTION,
         A.REQUEST_CPU_BOUND_SUGGESTION, A.REQUEST_HTTP_N_PLUS_ONE_ROUTE, A.REQUEST_HTTP_N_PLUS_ONE_CODE_LOCATION,
         A.REQUEST_HTTP_N_PLUS_ONE_SUGGESTION, A.REQUEST_EVENT_LOOP_CODE_LOCATION,
         A.REQUEST_SEQUENTIAL_CODE_LOCATION, A.REQUEST_SEQUENTIAL_SUGGESTION),
        _STRING,
    ),
    **dict.fromkeys(
        (A.QUERY_SLOW, A.QUERY_DUPLICATE, A.QUERY_NESTED, A.QUERY_SETUP, A.QUERY_NOSQL, A.QUERY_CURSOR_FETCH,
         A.N_PLUS_ONE_DETECTED, A.NOSQL_REPEAT_DETECTED, A.REQUEST_CPU_BOUND, A.REQUEST_HTTP_N_PLUS_ONE_DETECTED,
         A.REQUEST_SEQUENTIAL_DETECTED),
        _FLAG,
    ),
    **dict.fromkeys(
        (A.CODE_LINE_NUMBER, A.DB_QUERY_COUNT, A.DB_SLOW_QUERY_COUNT, A.DB_DUPLICATE_COUNT, A.DB_POOL_TIMEOUTS,
         A.N_PLUS_ONE_REPEAT_COUNT, A.NOSQL_REPEAT_COUNT, A.REQUEST_HTTP_N_PLUS_ONE_REPEAT_COUNT,
         A.REQUEST_EVENT_LOOP_BLOCKED_COUNT, A.REQUEST_SEQUENTIAL_COUNT),
        _COUNT,
    ),
    # no longer than a span can last
    **dict.fromkeys(
        (A.DB_DURATION_MS, A.DB_POOL_WAIT_MS, A.CPU_TIME_MS, A.REQUEST_EVENT_LOOP_BLOCKED_MS,
         A.REQUEST_SEQUENTIAL_SAVING_MS),
        _MS,
    ),
}  # fmt: skip


def _fits(value: Any, kind: str) -> bool:
    if kind == _STRING:
        return isinstance(value, str)
    if kind == _FLAG:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == _COUNT:
        return isinstance(value, int) and value >= 0
    return isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= _MAX_NS / 1e6


def _typed(attributes: dict[str, Any]) -> dict[str, Any]:
    for key, value in attributes.items():
        kind = ATTRIBUTE_TYPES.get(key)
        if kind is not None and not _fits(value, kind):
            raise ValueError(f"{key} {_show(value)} is not {kind}")
    return attributes


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    service: str
    status_code: int = 0  # STATUS_CODES

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class ReadStats:
    lines: int = 0
    corrupt: int = 0
    spans: int = 0  # spans read
    bad_spans: int = 0  # spans that could not be read (their line's other spans are kept)
    other_signals: int = 0  # well-formed OTLP metrics or logs lines: skipped, not corrupt
    log_lines: int = 0  # OTLP logs lines that held the database monitor's statistics (report/workload.py)
    reasons: list[str] = field(default_factory=list)  # why, for the first few rejected lines and spans

    def reject(self, where: str, why: str) -> None:
        if len(self.reasons) < _MAX_REASONS:
            reason = f"{where}: {why}"
            cut = reason if len(reason) <= _MAX_REASON_CHARS else reason[: _MAX_REASON_CHARS - 3] + "..."
            self.reasons.append(cut)

    def as_dict(self) -> dict[str, Any]:
        """The ``input`` object of the JSON reports."""
        out = {
            "lines": self.lines,
            "corrupt_lines": self.corrupt,
            "other_signal_lines": self.other_signals,
            "spans": self.spans,
            "bad_spans": self.bad_spans,
            "rejected": list(self.reasons),
        }
        if self.log_lines:  # only with the database monitor's statistics in the input
            out["server_log_lines"] = self.log_lines
        return out


def _text(s: dict[str, Any], name: str) -> str:
    value = s.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} {_show(value)} is not a string")
    return value


def _span(s: Any, service: str) -> Span:
    if not isinstance(s, dict):
        raise ValueError(f"span {_show(s)} is not an object")
    return Span(
        trace_id=_text(s, "traceId"),
        span_id=_text(s, "spanId"),
        parent_span_id=_text(s, "parentSpanId"),
        name=_text(s, "name"),
        kind=_enum(s.get("kind"), SPAN_KINDS, "kind"),
        start_ns=_int(s.get("startTimeUnixNano"), "startTimeUnixNano", 0, _MAX_NS),
        end_ns=_int(s.get("endTimeUnixNano"), "endTimeUnixNano", 0, _MAX_NS),
        attributes=_typed(_attrs(s.get("attributes"))),
        service=service,
        status_code=_enum((s.get("status") or {}).get("code"), STATUS_CODES, "status.code"),
    )


def _service(resource: Any) -> str:
    """The ``service.name`` of a resource ("" without one)."""
    if not isinstance(resource, dict):
        raise ValueError(f"resource {_show(resource)} is not an object")
    service = _attrs(resource.get("attributes")).get("service.name", "")
    if not isinstance(service, str):
        raise ValueError(f"service.name {_show(service)} is not a string")
    return service


def _span_name(s: Any) -> str:
    """How a rejected span is named in its reason: its id."""
    span_id = s.get("spanId", "?") if isinstance(s, dict) else "?"
    return span_id if isinstance(span_id, str) and len(span_id) <= 64 else _show(span_id)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"{what} is a {type(value).__name__}, not a list")
    return value


def read_spans(
    stream: TextIO,
    stats: ReadStats,
    on_line: Callable[[int], None] | None = None,
    name: str = "input",
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
    on_logs: Callable[[dict[str, Any]], int] | None = None,
) -> Iterator[Span]:
    """Spans of every well-formed line; malformed lines are counted in ``stats.corrupt``,
    spans that cannot be read in ``stats.bad_spans``, with the first few reasons in ``stats.reasons``.
    Metric lines go to ``on_metrics`` (the database servers' section) and count as other signals; a logs
    line goes to ``on_logs`` (the server's workload statistics), which says how many records it used."""
    for number, raw in enumerate(stream, start=1):
        if on_line is not None:
            on_line(len(raw))
        if not raw.strip():
            continue
        stats.lines += 1
        where = f"{name} line {number}"
        try:
            message = json.loads(raw)
        except RecursionError:
            stats.corrupt += 1
            stats.reject(where, "not JSON (nested too deeply)")
            continue
        except ValueError as exc:
            stats.corrupt += 1
            stats.reject(where, f"not JSON ({exc})")
            continue
        resource_spans = message.get("resourceSpans") if isinstance(message, dict) else None
        if not isinstance(resource_spans, list):
            if isinstance(message, dict) and on_logs is not None and "resourceLogs" in message and on_logs(message):
                stats.log_lines += 1
            elif isinstance(message, dict) and ("resourceMetrics" in message or "resourceLogs" in message):
                stats.other_signals += 1
                if on_metrics is not None and "resourceMetrics" in message:
                    on_metrics(message)
            else:
                stats.corrupt += 1
                stats.reject(where, "not an OTLP JSON message (no resourceSpans list)")
            continue
        try:
            for rs in resource_spans:
                resource = rs.get("resource") or {}
                try:
                    service, bad_resource = _service(resource), ""
                except _UNREADABLE as exc:  # its spans cannot be attributed: each is rejected
                    service, bad_resource = "", f"resource: {exc}"
                for ss in _list(rs.get("scopeSpans"), "scopeSpans"):
                    for s in _list(ss.get("spans"), "spans"):
                        try:
                            if bad_resource:
                                raise ValueError(bad_resource)
                            span = _span(s, service)
                        except _UNREADABLE as exc:
                            stats.bad_spans += 1
                            stats.reject(f"{where}, span {_span_name(s)}", str(exc))
                            continue
                        stats.spans += 1
                        yield span
        except _UNREADABLE as exc:
            stats.corrupt += 1
            stats.reject(where, f"not OTLP JSON ({type(exc).__name__}: {exc})")


@dataclass
class FingerprintStats:
    fingerprint: str
    summary: str = ""
    statement: str = ""
    system: str = ""  # db.system.name (or db.system) of its first span
    count: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    slow: int = 0
    duplicates: int = 0  # spans that exactly repeated an earlier query of their request
    duplicate_ms: float = 0.0  # their DB time: what caching the result within the request would save
    duplicate_trace: str = ""
    slowest_trace: str = ""
    samples: list[float] = field(default_factory=list)
    locations: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)

    def add(self, span: Span, rng: random.Random) -> None:
        ms = span.duration_ms
        self.count += 1
        self.total_ms += ms
        if ms >= self.max_ms:
            self.max_ms, self.slowest_trace = ms, span.trace_id
        if span.attributes.get(A.QUERY_SLOW):
            self.slow += 1
        if span.attributes.get(A.QUERY_DUPLICATE):
            self.duplicates += 1
            self.duplicate_ms += ms
            self.duplicate_trace = self.duplicate_trace or span.trace_id
        if len(self.samples) < _SAMPLES:
            self.samples.append(ms)
        else:
            i = rng.randrange(self.count)
            if i < _SAMPLES:
                self.samples[i] = ms
        path, line = span.attributes.get(A.CODE_FILE_PATH), span.attributes.get(A.CODE_LINE_NUMBER)
        if path:
            _bounded_add(self.locations, f"{path}:{line}")

    def percentile(self, q: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def finding_text(f: dict[str, Any]) -> str:
    """One request finding in words, with its worst figure."""
    kind, worst, detail = f["finding"], f["worst"], f["detail"]
    if kind == "cpu_bound":
        return f"CPU-bound, up to {worst:.0f} ms of CPU" + (f" in {detail}" if detail else "")
    if kind == "http_n_plus_one":
        return f"HTTP N+1, {detail} called up to {worst:.0f}x"
    if kind == "event_loop_blocked":
        return f"event loop blocked up to {worst:.0f} ms"
    if kind == "sequential_queries":
        return f"sequential queries, {detail} awaited in turn, up to {worst:.0f} ms to save"
    return str(kind)


def _number(value: Any) -> float:
    """A request attribute that should be a number (absent, or written by another tool: 0)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _attr_text(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda a: str(a.get(name, ""))


_LOOP_FIX = "run the blocking call in a thread (await asyncio.to_thread(...)) or make it async"
# the request findings beyond N+1 queries: (finding, flag, location, detail, suggestion, worst figure)
_FINDINGS: tuple[tuple[str, str, str, Callable[[dict[str, Any]], str], Callable[[dict[str, Any]], str], str], ...] = (
    ("cpu_bound", A.REQUEST_CPU_BOUND, A.REQUEST_CPU_BOUND_CODE_LOCATION, _attr_text(A.REQUEST_CPU_BOUND_FUNCTION),
     _attr_text(A.REQUEST_CPU_BOUND_SUGGESTION), A.CPU_TIME_MS),
    ("http_n_plus_one", A.REQUEST_HTTP_N_PLUS_ONE_DETECTED, A.REQUEST_HTTP_N_PLUS_ONE_CODE_LOCATION,
     _attr_text(A.REQUEST_HTTP_N_PLUS_ONE_ROUTE), _attr_text(A.REQUEST_HTTP_N_PLUS_ONE_SUGGESTION),
     A.REQUEST_HTTP_N_PLUS_ONE_REPEAT_COUNT),
    ("event_loop_blocked", A.REQUEST_EVENT_LOOP_BLOCKED_COUNT, A.REQUEST_EVENT_LOOP_CODE_LOCATION, lambda a: "",
     lambda a: _LOOP_FIX, A.REQUEST_EVENT_LOOP_BLOCKED_MS),
    ("sequential_queries", A.REQUEST_SEQUENTIAL_DETECTED, A.REQUEST_SEQUENTIAL_CODE_LOCATION,
     lambda a: f"{_number(a.get(A.REQUEST_SEQUENTIAL_COUNT)):.0f} queries", _attr_text(A.REQUEST_SEQUENTIAL_SUGGESTION),
     A.REQUEST_SEQUENTIAL_SAVING_MS),
)  # fmt: skip


def _bounded_add(counter: Counter[str], key: str, n: int = 1) -> None:
    if key in counter or len(counter) < _MAX_KEYS:
        counter[key] += n


@dataclass
class Filters:
    since_ns: int = 0
    until_ns: int = 0
    service: str = ""
    route: str = ""


class Report:
    """Aggregates spans into the report's findings."""

    def __init__(self, filters: Filters | None = None, top: int = 10) -> None:
        self.filters = filters or Filters()
        self.top = top
        self.fingerprints: dict[str, FingerprintStats] = {}
        self.n_plus_one: dict[tuple[str, str, str], dict[str, Any]] = {}
        # (finding, route, code location, detail) -> a request finding beyond N+1 queries (see _add_findings)
        self.findings: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        # (route, system, operation, location) -> one command of a key-value store repeated in a request
        self.repeated_calls: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.slowest: list[tuple[float, int, dict[str, Any]]] = []
        self.requests = 0
        self.db_spans = 0
        self._rng = random.Random(0)
        self._seq = 0
        self._route_of: OrderedDict[str, str] = OrderedDict()  # trace id -> route of its request
        self._pending: OrderedDict[str, list[str]] = OrderedDict()  # trace id -> fingerprints awaiting a route
        self._held: OrderedDict[str, list[Span]] = OrderedDict()  # with --route: queries awaiting their request
        # route -> [requests, total ms, DB ms, pool wait ms, pool timeouts] (bounded)
        self.routes: dict[str, list[float]] = {}
        self.server = ServerStats(self.filters.since_ns, self.filters.until_ns)

    def add_metrics(self, message: dict[str, Any]) -> None:
        """One OTLP JSON metrics message (otel-dbperf dbmonitor's server metrics); an unreadable
        one is skipped."""
        try:
            self.server.add(message)
        except (TypeError, ValueError, AttributeError):
            pass

    def _keep(self, span: Span) -> bool:
        f = self.filters
        if f.since_ns and span.start_ns < f.since_ns:
            return False
        if f.until_ns and span.start_ns > f.until_ns:
            return False
        return not (f.service and span.service != f.service)

    def add(self, span: Span) -> None:
        if not self._keep(span):
            return
        a = span.attributes
        if A.QUERY_FINGERPRINT in a:
            # nested: the same query as its ORM-level span; setup: the framework's connection setup;
            # nosql: a call to a key-value or document store, reported with its request; cursor_fetch: a
            # cursor's later fetch (its first fetch is the query)
            if not (
                a.get(A.QUERY_NESTED) or a.get(A.QUERY_SETUP) or a.get(A.QUERY_NOSQL) or a.get(A.QUERY_CURSOR_FETCH)
            ):
                self._add_query(span)
        elif A.DB_QUERY_COUNT in a or (span.kind == _SERVER and not span.parent_span_id):
            self._add_request(span)

    def _add_query(self, span: Span) -> None:
        a = span.attributes
        route = self._route_of.get(span.trace_id)
        if self.filters.route:
            if route is None:  # its request comes later (spans are exported children first)
                held = self._held.setdefault(span.trace_id, [])
                if len(held) < _SAMPLES:
                    held.append(span)
                if len(self._held) > _MAX_TRACES // 10:
                    self._held.popitem(last=False)
                return
            if route != self.filters.route:
                return
        self.db_spans += 1
        fp = str(a[A.QUERY_FINGERPRINT])
        stats = self.fingerprints.get(fp)
        if stats is None:
            stats = self.fingerprints[fp] = FingerprintStats(
                fp,
                summary=str(a.get(A.DB_QUERY_SUMMARY, "")),
                statement=str(a.get(A.DB_QUERY_TEXT) or a.get(A.DB_STATEMENT) or ""),
                system=str(a.get("db.system.name") or a.get("db.system") or ""),
            )
        stats.add(span, self._rng)
        if route is not None:
            _bounded_add(stats.routes, route)
        else:
            self._pending.setdefault(span.trace_id, []).append(fp)
            self._pending.move_to_end(span.trace_id)
            if len(self._pending) > _MAX_TRACES:
                self._pending.popitem(last=False)

    def _add_request(self, span: Span) -> None:
        a = span.attributes
        route = route_of(a) or str(span.name)
        self._route_of[span.trace_id] = route
        if len(self._route_of) > _MAX_TRACES:
            self._route_of.popitem(last=False)
        held = self._held.pop(span.trace_id, ())
        if self.filters.route and route != self.filters.route:
            return
        for query in held:
            self._add_query(query)
        self.requests += 1
        totals = self.routes.get(route)
        if totals is None and len(self.routes) < _MAX_TRACES // 100:
            totals = self.routes[route] = [0, 0.0, 0.0, 0.0, 0]
        pool_wait_ms = _number(a.get(A.DB_POOL_WAIT_MS))
        if totals is not None:
            totals[0] += 1
            totals[1] += span.duration_ms
            totals[2] += float(a.get(A.DB_DURATION_MS, 0.0))
            totals[3] += pool_wait_ms
            totals[4] += _number(a.get(A.DB_POOL_TIMEOUTS))
        for fp in self._pending.pop(span.trace_id, ()):
            _bounded_add(self.fingerprints[fp].routes, route)
        entry = {
            "route": route,
            "name": span.name,
            "trace_id": span.trace_id,
            "duration_ms": span.duration_ms,
            "db_queries": a.get(A.DB_QUERY_COUNT, 0),
            "db_duration_ms": a.get(A.DB_DURATION_MS, 0.0),
            "slow_queries": a.get(A.DB_SLOW_QUERY_COUNT, 0),
            "n_plus_one": bool(a.get(A.N_PLUS_ONE_DETECTED)),
            "duplicate_queries": int(a.get(A.DB_DUPLICATE_COUNT, 0)),
            "pool_wait_ms": pool_wait_ms,
            "error": span.status_code == STATUS_CODES["STATUS_CODE_ERROR"],
        }
        self._seq += 1
        if len(self.slowest) < self.top:
            heapq.heappush(self.slowest, (span.duration_ms, self._seq, entry))
        else:
            heapq.heappushpop(self.slowest, (span.duration_ms, self._seq, entry))
        if a.get(A.N_PLUS_ONE_DETECTED):
            key = (route, str(a.get(A.N_PLUS_ONE_FINGERPRINT, "")), str(a.get(A.N_PLUS_ONE_CODE_LOCATION, "")))
            finding = self.n_plus_one.setdefault(
                key,
                {
                    "route": route,
                    "fingerprint": key[1],
                    "code_location": key[2],
                    "python_location": str(a.get(A.N_PLUS_ONE_PYTHON_LOCATION, "")),
                    "query_summary": a.get(A.N_PLUS_ONE_QUERY_SUMMARY, ""),
                    "relationship": str(a.get(A.N_PLUS_ONE_RELATIONSHIP, "")),
                    "suggestion": str(a.get(A.N_PLUS_ONE_SUGGESTION, "")),
                    "requests": 0,
                    "max_repeat_count": 0,
                    "trace_id": span.trace_id,
                },
            )
            finding["requests"] += 1
            if not finding["suggestion"] and a.get(A.N_PLUS_ONE_SUGGESTION):
                finding["relationship"] = str(a.get(A.N_PLUS_ONE_RELATIONSHIP, ""))
                finding["suggestion"] = str(a[A.N_PLUS_ONE_SUGGESTION])
            repeat = int(a.get(A.N_PLUS_ONE_REPEAT_COUNT, 0))
            if repeat > finding["max_repeat_count"]:
                finding["max_repeat_count"], finding["trace_id"] = repeat, span.trace_id
        self._add_findings(span, route)
        if a.get(A.NOSQL_REPEAT_DETECTED):
            system, operation = str(a.get(A.NOSQL_REPEAT_SYSTEM, "")), str(a.get(A.NOSQL_REPEAT_OPERATION, ""))
            location = str(a.get(A.NOSQL_REPEAT_CODE_LOCATION, ""))
            call = self.repeated_calls.setdefault(
                (route, system, operation, location),
                {
                    "route": route,
                    "system": system,
                    "operation": operation,
                    "code_location": location,
                    "suggestion": str(a.get(A.NOSQL_REPEAT_SUGGESTION, "")),
                    "requests": 0,
                    "max_repeat_count": 0,
                    "trace_id": span.trace_id,
                },
            )
            call["requests"] += 1
            repeat = int(a.get(A.NOSQL_REPEAT_COUNT, 0))
            if repeat > call["max_repeat_count"]:
                call["max_repeat_count"], call["trace_id"] = repeat, span.trace_id

    def _add_findings(self, span: Span, route: str) -> None:
        """The request's findings beyond N+1 queries: one entry per (finding, route, location, detail),
        with how many requests and the worst figure (CPU ms, repeats, stalled ms, ms to save)."""
        a = span.attributes
        found: list[tuple[str, str, str, str, float]] = []
        for name, flag, where, detail_of, suggestion_of, worst in _FINDINGS:
            if a.get(flag):
                found.append((name, str(a.get(where, "")), detail_of(a), suggestion_of(a), _number(a.get(worst))))
        for kind, location, detail, suggestion, figure in found:
            key = (kind, route, location, detail)
            entry = self.findings.get(key)
            if entry is None:
                if len(self.findings) >= _MAX_FINDINGS:
                    continue
                entry = self.findings[key] = {
                    "finding": kind,
                    "route": route,
                    "code_location": location,
                    "detail": detail,
                    "suggestion": suggestion,
                    "requests": 0,
                    "worst": 0.0,
                    "trace_id": span.trace_id,
                }
            entry["requests"] += 1
            if figure > entry["worst"]:
                entry["worst"], entry["trace_id"] = figure, span.trace_id

    def as_dict(self, stats: ReadStats, jaeger_url: str = "") -> dict[str, Any]:
        def link(trace_id: str) -> dict[str, str]:
            return trace_link(trace_id, jaeger_url)

        top = sorted(self.fingerprints.values(), key=lambda s: -s.total_ms)[: self.top]
        repeated = [s for s in self.fingerprints.values() if s.duplicates]
        repeated = sorted(repeated, key=lambda s: (-s.duplicate_ms, -s.duplicates, s.fingerprint))[: self.top]
        return {
            "input": stats.as_dict(),
            "requests": self.requests,
            "db_spans": self.db_spans,
            "top_queries": [
                {
                    "fingerprint": s.fingerprint,
                    "summary": s.summary,
                    "tables": s.summary.split()[1:],
                    "statement": s.statement,
                    "count": s.count,
                    "total_ms": round(s.total_ms, 3),
                    "p50_ms": round(s.percentile(0.5), 3),
                    "p95_ms": round(s.percentile(0.95), 3),
                    "max_ms": round(s.max_ms, 3),
                    "slow": s.slow,
                    "code_locations": [loc for loc, _ in s.locations.most_common()],
                    "routes": [r for r, _ in s.routes.most_common()],
                    "slowest": link(s.slowest_trace),
                    "latency_sample_ms": sorted(round(x, 3) for x in s.samples),
                }
                for s in top
            ],
            "n_plus_one": [
                {**{k: v for k, v in f.items() if k != "trace_id"}, "example": link(f["trace_id"])}
                for f in sorted(self.n_plus_one.values(), key=lambda f: (-f["max_repeat_count"], f["route"]))
            ],
            "request_findings": [
                {
                    **{k: v for k, v in f.items() if k != "trace_id"},
                    "worst": round(f["worst"], 3),
                    "example": link(f["trace_id"]),
                }
                for f in sorted(self.findings.values(), key=lambda f: (f["finding"], -f["requests"], f["route"]))
            ],  # fmt: skip
            "repeated_calls": [
                {**{k: v for k, v in f.items() if k != "trace_id"}, "example": link(f["trace_id"])}
                for f in sorted(self.repeated_calls.values(), key=lambda f: (-f["max_repeat_count"], f["route"]))
            ],
            "duplicates": [
                {
                    "fingerprint": s.fingerprint,
                    "summary": s.summary,
                    "statement": s.statement,
                    "count": s.count,
                    "duplicates": s.duplicates,
                    "saved_ms": round(s.duplicate_ms, 3),
                    "code_locations": [loc for loc, _ in s.locations.most_common()],
                    "routes": [r for r, _ in s.routes.most_common()],
                    "example": link(s.duplicate_trace),
                }
                for s in repeated
            ],
            "routes": [
                {
                    "route": r,
                    "requests": int(t[0]),
                    "total_ms": round(t[1], 3),
                    "db_ms": round(t[2], 3),
                    "pool_wait_ms": round(t[3], 3),
                    "pool_timeouts": int(t[4]),
                }
                for r, t in sorted(self.routes.items(), key=lambda kv: -kv[1][2])
            ],
            "slowest_requests": [
                {**{k: v for k, v in e.items() if k != "trace_id"}, **link(e["trace_id"])}
                for _, _, e in sorted(self.slowest, key=lambda t: -t[0])
            ],
            "servers": self.server.as_list(),
        }


def read_files(
    names: list[str], reports: list[Report], stats: ReadStats, on_logs: Callable[[dict[str, Any]], int] | None = None
) -> str | None:
    """Feeds every span of ``names`` (``-``: standard input) to each report, with a progress bar on a
    terminal, and every logs line to ``on_logs``; the error message when a file cannot be read."""

    def on_metrics(message: dict[str, Any]) -> None:
        for report in reports:
            report.add_metrics(message)

    for name in names:
        try:
            stream = sys.stdin if name == "-" else open(name, encoding="utf-8", errors="replace")  # noqa: SIM115
            size = 0 if name == "-" else os.path.getsize(name)
        except OSError as exc:
            return f"cannot read {name}: {exc.strerror}"
        bar = FileProgress(name, size, sys.stderr)
        with stream:
            for span in read_spans(
                stream, stats, on_line=bar.advance, name=name, on_metrics=on_metrics, on_logs=on_logs
            ):
                for report in reports:
                    report.add(span)
        bar.done()
    return None


def json_text(data: dict[str, Any]) -> str:
    """``--json``: JSON, which has no NaN or Infinity (a non-finite number, should one arise, is null)."""
    return json.dumps(_finite(data), indent=2, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def render_text(data: dict[str, Any]) -> str:
    """The terminal report; the characters of the spans a terminal would act on are shown escaped."""
    data = printable_data(data)
    lines = []
    i = data["input"]
    lines.append(
        f"{i['spans']} spans from {i['lines']} lines ({i['corrupt_lines']} corrupt"
        + (f", {i['bad_spans']} unreadable spans" if i["bad_spans"] else "")
        + (f", {i['other_signal_lines']} of metrics or logs skipped" if i["other_signal_lines"] else "")
        + (f", {n} of database monitor statistics" if (n := i.get("server_log_lines")) else "")
        + "): "
        f"{data['requests']} requests, {data['db_spans']} DB spans"
    )
    if data.get("server"):
        lines.extend(server_lines(data["server"]))
    lines.append("")
    lines.append("Top queries by total DB time")
    for n, q in enumerate(data["top_queries"], start=1):
        lines.append(
            f"{n:>2}. {q['summary'] or '(no summary)'}  [{q['fingerprint']}]  {q['count']}x"
            f"  total {q['total_ms']:.1f} ms  p50 {q['p50_ms']:.1f}  p95 {q['p95_ms']:.1f}"
            f"  max {q['max_ms']:.1f} ms  slow {q['slow']}"
        )
        if q["tables"]:
            lines.append(f"      tables: {', '.join(q['tables'])}")
        lines.append(f"      {q['statement'][:200]}")
        for loc in q["code_locations"][:3]:
            lines.append(f"      at {loc}")
        if q["routes"]:
            lines.append(f"      from {', '.join(q['routes'][:5])}")
        lines.append(f"      slowest: {link_text(q['slowest'])}")
        if q.get("server"):
            lines.append(f"      {server_columns(q['server'])}")
    if data.get("server"):
        lines.append("")
        lines.extend(full_scan_lines(data["server"]["full_scans"]))
    lines.append("")
    lines.append("N+1 queries")
    if not data["n_plus_one"]:
        lines.append("  none found")
    for f in data["n_plus_one"]:
        lines.append(
            f"  {f['route']}: {f['query_summary']} repeated up to {f['max_repeat_count']}x "
            f"in {f['requests']} request(s) at {f['code_location']}  ({link_text(f['example'])})"
        )
        if f.get("python_location"):
            lines.append(f"      rendered from {f['python_location']}")
        if f.get("suggestion"):
            lines.append(f"      lazy load of {f['relationship']}: load it with {f['suggestion']}")
    lines.append("")
    lines.append("Repeated key-value / document store calls (the same command N times in one request: batch it)")
    if not data.get("repeated_calls"):
        lines.append("  none found")
    for c in data.get("repeated_calls", []):
        lines.append(
            f"  {c['route']}: {c['system']} {c['operation']} repeated up to {c['max_repeat_count']}x "
            f"in {c['requests']} request(s) at {c['code_location'] or '?'}: use {c['suggestion']}"
            f"  ({link_text(c['example'])})"
        )
    lines.append("")
    lines.append("Request findings beyond N+1 queries (CPU-bound, HTTP N+1, blocked event loop, sequential queries)")
    if not data.get("request_findings"):
        lines.append("  none found")
    for f in data.get("request_findings", []):
        lines.append(f"  {f['route']}: {finding_text(f)} in {f['requests']} request(s) at {f['code_location'] or '?'}"
                     f"  ({link_text(f['example'])})")  # fmt: skip
        if f["suggestion"]:
            lines.append(f"      {f['suggestion']}")
    lines.append("")
    lines.append("Exact duplicate queries (same statement and parameters again in one request: cache candidates)")
    if not data.get("duplicates"):
        lines.append("  none found")
    for d in data.get("duplicates", []):
        lines.append(
            f"  {d['summary'] or '(no summary)'}  [{d['fingerprint']}]  {d['duplicates']} of {d['count']} repeated "
            f"an earlier one: {d['saved_ms']:.1f} ms to save  ({link_text(d['example'])})"
        )
        for loc in d["code_locations"][:3]:
            lines.append(f"      at {loc}")
        if d["routes"]:
            lines.append(f"      from {', '.join(d['routes'][:5])}")
    lines.append("")
    lines.append("Slowest requests")
    for r in data["slowest_requests"]:
        lines.append(
            f"  {r['duration_ms']:8.1f} ms  {r['name']}  DB {r['db_queries']} queries / {r['db_duration_ms']:.1f} ms"
            f"  slow {r['slow_queries']}{'  N+1' if r['n_plus_one'] else ''}{'  error' if r['error'] else ''}"
            f"{f'  waited {wait:.1f} ms for a connection' if (wait := r.get('pool_wait_ms', 0.0)) else ''}"
            f"  ({link_text(r)})"
        )
    lines += render_lines(data.get("servers", []))
    return "\n".join(lines)


def trace_link(trace_id: str, jaeger_url: str) -> dict[str, str]:
    """A trace id, and its Jaeger page when ``DBPERF_JAEGER_URL`` is set (without the URL's
    credentials: a report is a file people pass around)."""
    out = {"trace_id": trace_id}
    if jaeger_url and trace_id:
        scheme, sep, rest = jaeger_url.strip().partition("://")
        if not sep:
            scheme, rest = "", scheme
        rest = re.split(r"[?#]", rest, maxsplit=1)[0]  # a query string may hold a token
        rest = rest.rpartition("@")[2]  # user and password (which may hold a '/') go
        out["jaeger_url"] = f"{scheme}{sep}{rest.rstrip('/')}/trace/{trace_id}"
    return out


def link_text(link: dict[str, str]) -> str:
    return link.get("jaeger_url") or f"trace {link.get('trace_id', '')}"
