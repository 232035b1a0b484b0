"""The request-span findings beyond N+1 queries, judged off the request thread.

The request thread keeps only raw facts on the :class:`~.record.Request`: its duration, its
thread CPU time (``DBPERF_RESOURCE_SAMPLES``), one tuple per outgoing HTTP call, and the
loop it ran on; the watchdog (:mod:`.watchdog`) adds stack samples and event-loop stalls, and
only for requests already over a threshold. Here, once per request (export or derivation
thread, whichever asks first), they become verdicts:

- **CPU-bound**: thread CPU time at or over ``DBPERF_CPU_BOUND_THRESHOLD_MS`` and at least
  ``DBPERF_CPU_BOUND_RATIO`` of the duration (sync requests only: under asyncio the loop
  thread's CPU time is every task's, see the blocked event loop);
- **HTTP N+1**: one outgoing route template called ``DBPERF_HTTP_N_PLUS_ONE_THRESHOLD``
  times or more; the template is derived from the URL by structure (:func:`url_template`);
- **blocked event loop**: the stalls the watchdog saw while the request held the loop;
- **sequential independent queries** (asyncio only): a run of awaited queries one after the
  other, each starting after the previous ended, of distinct statements.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.trace import Event

from .. import attributes as A

#: the finding names, as the ``dbperf.finding`` label of ``dbperf.request.findings`` and in the report
CPU_BOUND = "cpu_bound"
HTTP_N_PLUS_ONE = "http_n_plus_one"
EVENT_LOOP_BLOCKED = "event_loop_blocked"
SEQUENTIAL_QUERIES = "sequential_queries"
KINDS = (CPU_BOUND, HTTP_N_PLUS_ONE, EVENT_LOOP_BLOCKED, SEQUENTIAL_QUERIES)

CPU_SUGGESTION = (
    "move the CPU-bound work out of the request: a background worker (Celery, RQ) or a process pool, "
    "or cache its result"
)
LOOP_SUGGESTION = "run the blocking call in a thread (await asyncio.to_thread(...)) or make it async"

_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]{8,}")
_NUMBER_EXT = re.compile(r"([0-9]+)(\.[A-Za-z][A-Za-z0-9]{0,7})")
_WORD = re.compile(r"[A-Za-z][A-Za-z_\-]*[A-Za-z]?|v[0-9]{1,2}")  # a name or a version (v1, v2)


def segment_template(segment: str) -> str:
    """A URL path segment as it stands in a route template: identifiers become placeholders."""
    if not segment:
        return segment
    if segment.isdigit():
        return "{id}"
    if _UUID.fullmatch(segment):
        return "{uuid}"
    match = _NUMBER_EXT.fullmatch(segment)
    if match:
        return "{id}" + match[2]
    if _WORD.fullmatch(segment) and len(segment) <= 40:
        return segment
    if _HEX.fullmatch(segment) and any(c.isdigit() for c in segment):
        return "{hex}"
    if any(c.isdigit() for c in segment) or "%" in segment or "@" in segment or len(segment) > 40:
        return "{value}"  # a slug with a number, an encoded value, an address, a token
    return segment


def url_template(url: Any, template: Any = None) -> str:
    """``scheme://host[:port]/path/{id}`` for an outgoing call: the path's identifiers replaced by
    placeholders (no query string, no user info); ``template``: the instrumentation's own
    ``url.template`` (a path), used as is. "" when ``url`` is no absolute URL."""
    if not isinstance(url, str):
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return ""
    if not parts.scheme or not host:
        return ""
    origin = f"{parts.scheme}://{host}{f':{port}' if port else ''}"
    if isinstance(template, str) and template.startswith("/"):
        return origin + template
    path = "/".join(segment_template(s) for s in parts.path.split("/"))
    return origin + (path or "/")


class Findings:
    """A request's verdicts beyond N+1 queries (made once, see :func:`findings_of`)."""

    __slots__ = (
        "cpu_ratio", "cpu_bound", "hot_location", "hot_function", "samples",
        "http_count", "http_ns", "http_detected", "http_route", "http_repeats", "http_location",
        "stalls", "stalled_ns", "stall_location",
        "seq_detected", "seq_count", "seq_ns", "seq_saving_ns", "seq_location",
    )  # fmt: skip
    cpu_ratio: float
    cpu_bound: bool
    hot_location: str
    hot_function: str
    samples: int
    http_count: int
    http_ns: int
    http_detected: bool
    http_route: str
    http_repeats: int
    http_location: str
    stalls: list[Stall]
    stalled_ns: int
    stall_location: str
    seq_detected: bool
    seq_count: int
    seq_ns: int
    seq_saving_ns: int
    seq_location: str

    def kinds(self) -> list[str]:
        """The findings detected, by name."""
        found = []
        if self.cpu_bound:
            found.append(CPU_BOUND)
        if self.http_detected:
            found.append(HTTP_N_PLUS_ONE)
        if self.stalls:
            found.append(EVENT_LOOP_BLOCKED)
        if self.seq_detected:
            found.append(SEQUENTIAL_QUERIES)
        return found

    def http_suggestion(self) -> str:
        return (
            f"{self.http_repeats} calls of {self.http_route} in one request: fetch them in one call "
            "(a batch endpoint or a list of ids) or run them concurrently"
        )

    def seq_suggestion(self) -> str:
        return f"these {self.seq_count} queries wait for one another: run them concurrently (asyncio.gather)"


def _location(loc: Any) -> str:
    return f"{loc[0]}:{loc[1]}" if loc else ""


def findings_of(request: Any, thresholds: Any, resources: bool) -> Findings:
    """The request's findings, made by the first consumer that asks after its root span ended."""
    found = request.findings
    if found is not None:
        return found  # type: ignore[no-any-return]
    f = Findings()
    # CPU-bound
    duration = request.duration_ns
    cpu = request.cpu_ns if resources else 0
    f.cpu_ratio = min(1.0, cpu / duration) if duration > 0 else 0.0
    f.cpu_bound = (
        resources
        and request.loop is None
        and cpu >= thresholds.cpu_bound_ns
        and f.cpu_ratio >= thresholds.cpu_bound_ratio
    )
    samples = list(request.samples or ())
    f.samples = len(samples)
    f.hot_location = f.hot_function = ""
    if samples:
        lines = Counter((s[0], s[1]) for s in samples if s[0])
        if lines:
            (file, line), _ = lines.most_common(1)[0]
            f.hot_location = f"{file}:{line}"
            f.hot_function = Counter(s[2] for s in samples if (s[0], s[1]) == (file, line)).most_common(1)[0][0]
    # HTTP N+1
    calls = list(request.http or ())
    f.http_count = len(calls)
    f.http_ns = sum(c[3] for c in calls)
    counts: Counter[str] = Counter()
    first: dict[str, Any] = {}
    for template, url, method, _duration, location in calls:
        route = url_template(url, template)
        if not route:
            continue
        key = f"{method or 'GET'} {route}"
        counts[key] += 1
        first.setdefault(key, location)
    f.http_detected, f.http_route, f.http_repeats, f.http_location = False, "", 0, ""
    if counts:
        route, repeats = counts.most_common(1)[0]
        if repeats >= thresholds.http_n_plus_one:
            f.http_detected, f.http_route, f.http_repeats = True, route, repeats
            f.http_location = _location(first[route])
    # blocked event loop
    stalls = list(request.stalls or ())
    f.stalls = stalls
    f.stalled_ns = sum(s.duration() for s in stalls)
    longest = max(stalls, key=lambda s: s.duration(), default=None)
    f.stall_location = _location(longest.location) if longest is not None else ""
    # sequential independent queries
    f.seq_detected, f.seq_count, f.seq_ns, f.seq_saving_ns, f.seq_location = False, 0, 0, 0, ""
    if request.loop is not None and thresholds.sequential:
        _sequential(f, request, thresholds.sequential)
    if request.ended:
        request.findings = f
    return f


#: a bind parameter in a raw statement (string literals removed first): ``?``, ``%s``, ``%(name)s``,
#: ``$1``, ``:name``
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")
_PARAMETER = re.compile(r"\?|%s|%\([A-Za-z_][A-Za-z0-9_]*\)s|\$[0-9]+|(?<![:\w]):[A-Za-z_][A-Za-z0-9_]*")


def takes_parameters(statement: Any) -> bool:
    """Whether a raw statement has bind parameters: values the application passed in, which may
    come from an earlier query's rows (a statement without any cannot depend on them)."""
    if not isinstance(statement, str):
        return True
    return bool(_PARAMETER.search(_STRING_LITERAL.sub("", statement)))


def _sequential(f: Findings, request: Any, threshold: int) -> None:
    """The longest run of SELECTs awaited one after another (each starting after the previous one
    ended), of distinct statements (a repeated statement is the N+1's business), where every one
    after the first takes no bind parameter: none can have used an earlier one's rows, so all could
    have started together. Reads the queries' times and analysis (the roll-up, made first, analysed them)."""
    best: list[Any] = []
    run: list[Any] = []
    for query in request.records[: request.cursor]:
        facts = query.facts
        if facts is None or facts.operation != "SELECT" or not query.start_ns:
            run = []
            continue
        if run:
            previous = run[-1]
            if (
                query.start_ns < previous.start_ns + previous.duration_ns
                or takes_parameters(query.statement)
                or any(q.facts.fingerprint == facts.fingerprint for q in run)
            ):
                run = []
        run.append(query)
        if len(run) > len(best):
            best = list(run)
    if len(best) >= threshold:
        durations = [q.duration_ns for q in best]
        f.seq_detected, f.seq_count = True, len(best)
        f.seq_ns = sum(durations)
        f.seq_saving_ns = f.seq_ns - max(durations)
        f.seq_location = _location(best[0].location)


def findings_attributes(
    request: Any, thresholds: Any, resources: bool, attrs: dict[str, Any], events: list[Any]
) -> None:
    """The findings' attributes for the request's root span into ``attrs``, its stall events into ``events``."""
    f = findings_of(request, thresholds, resources)
    if resources and request.loop is None:
        attrs[A.REQUEST_CPU_BOUND] = f.cpu_bound
        attrs[A.REQUEST_CPU_RATIO] = round(f.cpu_ratio, 4)
        if f.cpu_bound:
            attrs[A.REQUEST_CPU_BOUND_SAMPLES] = f.samples
            attrs[A.REQUEST_CPU_BOUND_SUGGESTION] = CPU_SUGGESTION
            if f.hot_location:
                attrs[A.REQUEST_CPU_BOUND_CODE_LOCATION] = f.hot_location
                attrs[A.REQUEST_CPU_BOUND_FUNCTION] = f.hot_function
    if f.http_count:
        attrs[A.REQUEST_HTTP_CALL_COUNT] = f.http_count
        attrs[A.REQUEST_HTTP_DURATION_MS] = f.http_ns / 1e6
    attrs[A.REQUEST_HTTP_N_PLUS_ONE_DETECTED] = f.http_detected
    if f.http_detected:
        attrs[A.REQUEST_HTTP_N_PLUS_ONE_ROUTE] = f.http_route
        attrs[A.REQUEST_HTTP_N_PLUS_ONE_REPEAT_COUNT] = f.http_repeats
        if f.http_location:
            attrs[A.REQUEST_HTTP_N_PLUS_ONE_CODE_LOCATION] = f.http_location
        attrs[A.REQUEST_HTTP_N_PLUS_ONE_SUGGESTION] = f.http_suggestion()
    if request.loop is not None and thresholds.loop_blocked_ns:
        attrs[A.REQUEST_EVENT_LOOP_BLOCKED] = bool(f.stalls)
    if f.stalls:
        attrs[A.REQUEST_EVENT_LOOP_BLOCKED_COUNT] = len(f.stalls)
        attrs[A.REQUEST_EVENT_LOOP_BLOCKED_MS] = f.stalled_ns / 1e6
        if f.stall_location:
            attrs[A.REQUEST_EVENT_LOOP_CODE_LOCATION] = f.stall_location
        for stall in f.stalls:
            event: dict[str, Any] = {
                A.EVENT_DURATION_MS: stall.duration() / 1e6,
                A.EVENT_THRESHOLD_MS: thresholds.loop_blocked_ns / 1e6,
            }
            if stall.location and stall.location[0]:
                event[A.CODE_FILE_PATH], event[A.CODE_LINE_NUMBER], event[A.CODE_FUNCTION_NAME] = stall.location
            events.append(Event(A.EVENT_EVENT_LOOP_BLOCKED, event, timestamp=stall.wall))
    if request.loop is not None and thresholds.sequential:
        attrs[A.REQUEST_SEQUENTIAL_DETECTED] = f.seq_detected
        if f.seq_detected:
            attrs[A.REQUEST_SEQUENTIAL_COUNT] = f.seq_count
            attrs[A.REQUEST_SEQUENTIAL_DURATION_MS] = f.seq_ns / 1e6
            attrs[A.REQUEST_SEQUENTIAL_SAVING_MS] = f.seq_saving_ns / 1e6
            if f.seq_location:
                attrs[A.REQUEST_SEQUENTIAL_CODE_LOCATION] = f.seq_location
            attrs[A.REQUEST_SEQUENTIAL_SUGGESTION] = f.seq_suggestion()


class Stall:
    """One event-loop stall seen by the watchdog (times: ``time.monotonic_ns``)."""

    __slots__ = ("start", "end", "location", "wall")

    def __init__(self, start: int, location: Any) -> None:
        self.start = start
        self.end = 0  # 0: not seen to end yet
        self.location = location
        self.wall = time.time_ns() - (time.monotonic_ns() - start)  # its start on the span clock

    def duration(self) -> int:
        """Its length; one not seen to end yet: so far (a lower bound)."""
        return (self.end or time.monotonic_ns()) - self.start
