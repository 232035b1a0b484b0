"""What the pipeline carries: a DB span's :class:`Query`, a request's :class:`Request` and its
:class:`Rollup`, and the :class:`Thresholds` every stage judges by.

A :class:`Query` is made when its span starts and filled in when it ends, on the request
thread (slots only: a class with ``__init__`` would cost a Python call per query). Other
hooks that run while the span is open write into it too (the parameters' digest, the
EXPLAIN plan). Off the request thread it is analysed once: :meth:`Query.analysis` (the
statement's fingerprint, summary, sanitized text) and :meth:`Request.advance` (its place
among the request's queries: repeat count, exact duplicate) are computed by whichever
consumer asks first and kept on the objects for the others.
"""

from __future__ import annotations

from _thread import get_ident
from asyncio import _get_running_loop as _running_loop
from asyncio import current_task as _current_task
from dataclasses import dataclass
from time import time_ns
from typing import Any

from opentelemetry.sdk.trace import Event

from .. import _forksafe
from .._error_kind import AppError
from .._sql import Analysis, analyze
from ..settings import Settings

#: requests are analysed under this lock; never taken on a request thread
ANALYSIS_LOCK = _forksafe.lock("record.analysis")

MAX_QUERIES_PER_REQUEST = 10_000  # queries of one request kept for its N+1 analysis; beyond: totals
MAX_REQUEST_EVENTS = 32  # events other hooks add to one request's root span
MAX_HTTP_CALLS = 1_000  # outgoing HTTP calls of one request kept for its HTTP N+1 analysis


@dataclass(frozen=True)
class Thresholds:
    """Every "is it slow, is it repeated, how long may it be" decision, built once from the settings
    (by the processor) and handed to every stage and listener that judges: durations in nanoseconds,
    one name each; :attr:`slow_ms` and :attr:`slow_s` only say ``slow_ns`` in the units of an output."""

    slow_ns: int
    stack_ns: int
    n_plus_one: int
    statement_max_length: int
    long_transaction_ns: int = 1_000_000_000
    # the request-span findings beyond N+1 (see .findings)
    cpu_bound_ns: int = 200_000_000
    cpu_bound_ratio: float = 0.5
    http_n_plus_one: int = 5
    loop_blocked_ns: int = 100_000_000  # 0: no event-loop watchdog
    sequential: int = 3  # 0: no sequential-queries finding

    @property
    def slow_ms(self) -> float:
        return self.slow_ns / 1e6

    @property
    def slow_s(self) -> float:
        return self.slow_ns / 1e9

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            slow_ns=int(settings.slow_query_threshold_ms * 1_000_000),
            stack_ns=int(settings.stacktrace_threshold_ms * 1_000_000),
            n_plus_one=settings.n_plus_one_threshold,
            statement_max_length=settings.statement_max_length,
            long_transaction_ns=int(settings.long_transaction_ms * 1_000_000),
            cpu_bound_ns=int(settings.cpu_bound_threshold_ms * 1_000_000),
            cpu_bound_ratio=settings.cpu_bound_ratio,
            http_n_plus_one=settings.http_n_plus_one_threshold,
            loop_blocked_ns=int(settings.event_loop_blocked_ms * 1_000_000),
            sequential=settings.sequential_queries_threshold,
        )


class Query:
    """One DB client span: measured on the request thread, analysed once off it."""

    __slots__ = (
        # set when the span starts
        "request",  # the Request it belongs to, or None (a script, a job, startup)
        "orm",  # an ORM-level span (SQLAlchemy's): driver spans inside it are nested
        "params",  # keyed digest of the parameters (see params.digest), b"" for none, None: not taken
        "plan",  # (attributes, time) of its EXPLAIN plan (see _sqla.explain), or None
        "cpu_ns",  # thread CPU ns (at the start, then the span's), -1: not sampled (DBPERF_RESOURCE_SAMPLES)
        "rss_delta",  # RSS bytes (at the start, then the change), None: not sampled
        # set when it ends
        "duration_ns",
        "start_ns",  # the span's start (epoch ns), for the sequential-queries finding
        "slow",
        "statement",  # the raw statement text (never exported as is), or None: a connect span
        "system",  # db.system.name / db.system: the dialect the statement is sanitized by
        "location",  # (file, line, function) of the application code that issued it, or None
        "stack",  # the application stack, for a query over the stack-trace threshold, else ""
        "relationship",  # the SQLAlchemy relationship it lazily loaded, or None
        "nested",  # a driver span inside an ORM-level span (of a request, or open on the thread): not counted twice
        # the AppError of a failed span whose error text the application wrote (see _error_kind.app_error);
        # set only then (read with getattr(query, "app_error", None))
        "app_error",
        # KIND_QUERY a SQL query of the application; KIND_SETUP a connection span or a statement of the
        # framework's connection setup (not a query: not counted, no slow flag); KIND_NOSQL a call to a
        # key-value or document store (its own roll-up, see _nosql); KIND_NOSQL_FRAMEWORK one with no
        # application frame on the stack (a worker's broker and result-backend traffic): not rolled up;
        # KIND_CURSOR_FETCH a later fetch of a cursor whose first fetch is the query (its time goes to
        # the request's DB time, nothing else)
        "kind",
        # off the request thread
        "facts",  # its Analysis, once made (see analysis())
        "repeat",  # its rank among the request's queries of the same fingerprint (0: not counted)
        "duplicate",  # an exact repeat (same SELECT, same parameters) of an earlier query of the request
    )
    request: Request | None
    orm: bool
    params: bytes | None
    plan: tuple[dict[str, Any], int] | None
    cpu_ns: int
    rss_delta: int | None
    duration_ns: int
    start_ns: int
    slow: bool
    statement: Any
    system: Any
    # (file, line, function); for a query a template triggered, (template, template line, the
    # view's function, "file:line" of the view)
    location: tuple[Any, ...] | None
    stack: str
    relationship: Any
    nested: bool
    app_error: AppError | None
    kind: int
    facts: Analysis | None
    repeat: int
    duplicate: bool

    def analysis(self, max_length: int) -> Analysis | None:
        """The statement's analysis (None: no text), made by the first consumer that asks."""
        facts = self.facts
        if facts is None:
            statement = self.statement
            if not isinstance(statement, str):
                return None
            facts = self.facts = analyze(statement, max_length, self.system)
        return facts


def new_query(request: Request | None, orm: bool) -> Query:
    """A query at its span's start (the processor fills in the rest at its end)."""
    query = _new(Query)
    query.request = request
    query.orm = orm
    query.params = None
    query.plan = None
    query.facts = None
    query.repeat = 0
    query.duplicate = False
    query.kind = 0  # KIND_QUERY until its end says otherwise
    query.start_ns = 0
    return query


_new = object.__new__


class Request:
    """A local root span (web request, task, job): its queries and their roll-up."""

    __slots__ = (
        "root_id", "records", "overflow", "open_orm", "cpu0", "cpu_ns", "rss0", "rss", "ended",
        "cursor", "fp_counts", "dup_keys", "dup_count", "dup_ns", "extras", "events", "_rollup", "calls",
        "app_error", "fetch_ns", "thread", "loop", "task", "watched", "duration_ns", "http", "samples", "stalls",
        "findings",
    )  # fmt: skip

    def __init__(self, root_id: int, cpu0: int, rss0: int) -> None:
        self.root_id = root_id
        self.records: list[Query] = []  # appended by request threads (atomic), read by index
        self.overflow = [0, 0, 0]  # beyond the cap only totals are kept: count, duration_ns, slow
        self.open_orm = 0  # ORM-level DB spans in flight (driver spans inside them are not counted twice)
        self.fetch_ns = 0  # the time of its cursors' later fetches (KIND_CURSOR_FETCH): DB time, no query
        self.cpu0 = cpu0
        self.cpu_ns = 0
        self.rss0 = rss0
        self.rss = 0
        self.ended = False  # its root span has ended
        # off the request thread, under ANALYSIS_LOCK
        self.cursor = 0  # records[:cursor] are counted in fp_counts
        self.fp_counts: dict[str, int] = {}
        self.dup_keys: set[tuple[str, bytes]] = set()  # (statement, parameter digest) of the SELECTs so far
        self.dup_count = 0  # SELECTs that exactly repeat an earlier one of the request
        self.dup_ns = 0  # and their DB time
        #: attributes other hooks add to the request's root span (see DbPerfSpanProcessor.current_request)
        self.extras: dict[str, Any] | None = None
        #: events other hooks add to the request's root span (see :meth:`event`)
        self.events: list[Event] | None = None
        self._rollup: Rollup | None = None
        #: the request's calls to key-value and document stores (see _nosql), None: none yet
        self.calls: list[Query] | None = None
        #: set (request thread) when a span of the request failed with an error text the application
        #: wrote: the error texts of the request's later failed spans and of its root keep only its code
        self.app_error: AppError | None = None
        # for the findings beyond N+1 (see .findings): the request's thread and the asyncio loop running
        # on it (None: sync code), its duration (set at its end), its outgoing HTTP calls
        # ((url.template, url, method, duration_ns, location), None: none yet), the watchdog's stack samples
        # (locations) and event-loop stalls, and the verdicts once made off the request thread
        self.thread = get_ident()
        loop = self.loop = _running_loop()
        self.task = _current_task(loop) if loop is not None else None
        self.watched = 0  # when the watchdog first saw it open (its thread, monotonic ns)
        self.duration_ns = 0
        self.http: list[tuple[Any, Any, Any, int, Any]] | None = None
        self.samples: list[tuple[Any, ...]] | None = None
        self.stalls: list[Any] | None = None
        self.findings: Any = None

    # ---- request thread: figures of other concerns (pool waits, transactions) -------------
    def add(self, key: str, value: float) -> None:
        """Add ``value`` to the request attribute ``key``; the sum lands on the root span at export."""
        extras = self.extras
        if extras is None:
            extras = self.extras = {}
        extras[key] = extras.get(key, 0) + value

    def set_max(self, key: str, value: float) -> None:
        """Keep the largest ``value`` seen for the request attribute ``key``."""
        extras = self.extras
        if extras is None:
            extras = self.extras = {}
        if key not in extras or value > extras[key]:
            extras[key] = value

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        """An event for the request's root span, timed now (a long pool wait, a long transaction).
        Bounded: past :data:`MAX_REQUEST_EVENTS` they are not kept."""
        events = self.events
        if events is None:
            events = self.events = []
        if len(events) < MAX_REQUEST_EVENTS:
            events.append(Event(name, attributes, timestamp=time_ns()))

    # ---- off the request thread ----------------------------------------------------------
    def advance(self, max_length: int) -> None:
        """Analyse the queries that came since the last call, in order: fingerprints, repeats, duplicates."""
        with ANALYSIS_LOCK:
            self._advance(max_length)

    def _advance(self, max_length: int) -> None:
        records = self.records
        counts = self.fp_counts
        end = len(records)
        for i in range(self.cursor, end):
            query = records[i]
            analysis = query.analysis(max_length)
            fingerprint = ""
            if analysis is not None:
                fingerprint = analysis.fingerprint
                params = query.params
                if params is not None and analysis.operation == "SELECT":
                    key = (query.statement, params)
                    if key in self.dup_keys:
                        query.duplicate = True
                        self.dup_count += 1
                        self.dup_ns += query.duration_ns
                    else:
                        self.dup_keys.add(key)
            query.repeat = counts[fingerprint] = counts.get(fingerprint, 0) + 1
        self.cursor = end

    def rollup(self, thresholds: Thresholds) -> Rollup:
        """The request's roll-up and N+1 verdict, made once (after its root ended) and shared by
        the span attributes, the metrics and the sinks."""
        rollup = self._rollup
        if rollup is None:
            with ANALYSIS_LOCK:
                rollup = self._rollup
                if rollup is None:
                    self._advance(thresholds.statement_max_length)
                    rollup = Rollup(self, thresholds)
                    if self.ended:
                        self._rollup = rollup
        return rollup


class Rollup:
    """A request's DB figures and its N+1 verdict (the repeated fingerprint with the most repeats).

    Made under ANALYSIS_LOCK, from the queries analysed so far."""

    __slots__ = (
        "count", "db_ns", "slow", "dup_count", "dup_ns", "detected", "fingerprint", "repeats",
        "summary", "location", "relationship", "repeated",
    )  # fmt: skip

    def __init__(self, request: Request, thresholds: Thresholds) -> None:
        records = list(request.records[: request.cursor])
        more, more_ns, more_slow = request.overflow
        db_ns, slow = more_ns + request.fetch_ns, more_slow
        for query in records:
            db_ns += query.duration_ns
            slow += query.slow
        self.count = len(records) + more
        self.db_ns = db_ns
        self.slow = slow
        self.dup_count = request.dup_count
        self.dup_ns = request.dup_ns
        n1 = thresholds.n_plus_one
        #: every fingerprint repeated N+1 style: (fingerprint, table), for the metrics
        self.repeated = [
            (fp, _table_of(records, fp)) for fp, repeats in request.fp_counts.items() if fp and repeats >= n1
        ]
        worst_fp, worst = "", 0
        for fp, repeats in request.fp_counts.items():
            if repeats > worst and fp:
                worst_fp, worst = fp, repeats
        self.detected = worst >= n1
        self.fingerprint = worst_fp if self.detected else ""
        self.repeats = worst if self.detected else 0
        self.summary = ""
        self.location: tuple[Any, ...] | None = None
        self.relationship: Any = None
        if self.detected:
            first = None
            for query in records:
                if query.facts is not None and query.facts.fingerprint == worst_fp:
                    if first is None:
                        first = query
                    if query.relationship is not None:
                        self.relationship = query.relationship
                        break
            if first is not None and first.facts is not None:
                self.summary = first.facts.summary
                self.location = first.location


def _table_of(records: list[Query], fingerprint: str) -> str:
    for query in records:
        facts = query.facts
        if facts is not None and facts.fingerprint == fingerprint:
            return facts.table  # type: ignore[no-any-return]
    return ""
