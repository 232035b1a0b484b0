"""The profiler API apart from its HTTP transport: the endpoints over a history, the access
rules (token, loopback host names, what a web page of another origin may send) and the JSON error
bodies. The HTTP server (:mod:`.server`) and the mount on the app's port (:mod:`.mount`) both
answer through it.
"""

from __future__ import annotations

import hmac
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from .. import _forksafe
from .._resources import rss_bytes
from .history import FINDING_SUMS, ProfilerBusy, QueryEntry, slowest_first
from .openapi import MAX_ID, MAX_LIMIT, MAX_TOP, document

PREFIX = "/profiler/"
#: the bodies a web page may send to another origin without asking first (a CORS "simple request")
_SIMPLE_BODIES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
TOKEN_FORMAT = re.compile(r"[\x21-\x7e]{16,}")  # visible ASCII: it travels in a header


class HTTPError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.parameter, self.headers = parameter, headers


def _bad(parameter: str, message: str) -> HTTPError:
    return HTTPError(400, "bad_parameter", message, parameter)


_DIGITS = re.compile(r"[0-9]{1,19}")


def _int_param(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = _single(query, name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise _bad(name, f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _float_param(query: dict[str, list[str]], name: str, default: float) -> float:
    raw = _single(query, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise _bad(name, f"{name} must be a number of seconds >= 0")
    return value


def _bool_param(query: dict[str, list[str]], name: str) -> bool:
    raw = _single(query, name)
    if raw is None:
        raise _bad(name, f"{name} is required (true or false)")
    if raw not in ("true", "false"):
        raise _bad(name, f"{name} must be true or false")
    return raw == "true"


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise _bad(name, f"{name} must be given once")
    return values[0]


def _aggregate(entries: list[QueryEntry]) -> dict[str, Any]:
    total = len(entries)
    slow = sum(1 for e in entries if e.slow)
    duration = sum(e.duration_s for e in entries)
    data: dict[str, Any] = {
        "total_queries": total,
        "slow_queries": slow,
        "slow_query_percentage": _percent(slow, total),
        "avg_duration_s": duration / total if total else 0.0,
        "max_duration_s": max((e.duration_s for e in entries), default=0.0),
        "total_duration_s": duration,
    }
    data["avg_duration"], data["max_duration"] = data["avg_duration_s"], data["max_duration_s"]  # seed 000
    return data


def _routes(routes: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Each route's request figures as the API gives them (durations rounded to the microsecond)."""
    return {
        route: {
            "requests": int(row["requests"]),
            "db_queries": int(row["db_queries"]),
            "db_duration_s": round(row["db_duration_s"], 6),
            "pool_wait_ms": round(row["pool_wait_ms"], 3),
            "max_pool_wait_ms": round(row["max_pool_wait_ms"], 3),
            "pool_waited_requests": int(row["pool_waited_requests"]),
            "pool_timeouts": int(row["pool_timeouts"]),
            **{name: int(row.get(name, 0)) for name in FINDING_SUMS},
        }
        for route, row in routes.items()
    }


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def _slowest(entries: list[QueryEntry], limit: int) -> list[dict[str, Any]]:
    return [e.summary() for e in slowest_first(entries)[:limit]]


def _cpu_time_s() -> float:
    times = os.times()
    return times.user + times.system


def _process(rss: int | None = None, cpu_time_s: float | None = None) -> dict[str, Any]:
    rss = rss_bytes() if rss is None else rss
    return {
        "memory_rss_bytes": rss,
        "memory_usage_mb": round(rss / (1024 * 1024), 3),
        "cpu_time_s": round(_cpu_time_s() if cpu_time_s is None else cpu_time_s, 3),
    }


class HistoryView(Protocol):
    """What the API reads: a :class:`QueryHistory`, or the master's merged view of its workers."""

    max_history: int
    enabled: bool

    def totals(self) -> dict[str, Any]: ...
    def last_seen_totals(self) -> dict[str, Any]: ...  # without asking anyone: health
    def entries(self, last_n: int | None = None) -> list[QueryEntry]: ...
    def slowest(self, threshold_s: float, limit: int) -> tuple[int, list[QueryEntry]]: ...
    def get(self, entry_id: int) -> QueryEntry | None: ...
    def reset(self) -> None: ...


class API:
    """The endpoints apart from the HTTP plumbing: each takes the parsed query string and
    returns the JSON body, or raises :class:`HTTPError`."""

    def __init__(self, history: HistoryView, slow_threshold_s: float, token_required: bool) -> None:
        self.history = history
        self.slow_threshold_s = slow_threshold_s
        self.token_required = token_required  # the OpenAPI document declares the bearer scheme
        self._cpu_mark = (time.monotonic(), _cpu_time_s())  # cpu_usage_percent: since the last stats
        self._cpu_lock = _forksafe.lock("profiler.cpu")
        self.routes: dict[str, tuple[str, Callable[[dict[str, list[str]]], dict[str, Any]]]] = {
            "stats": ("GET", self.stats),
            "report": ("GET", self.report),
            "slow-queries": ("GET", self.slow_queries),
            "health": ("GET", self.health),
            "openapi.json": ("GET", self.openapi),
            "toggle": ("POST", self.toggle),
            "reset": ("POST", self.reset),
        }

    def stats(self, query: dict[str, list[str]]) -> dict[str, Any]:
        t = self.history.totals()
        total = t["total_queries"]
        process = _process(t.get("memory_rss_bytes"), t.get("cpu_time_s"))  # merged: every worker's sum
        avg = t["total_duration_s"] / total if total else 0.0
        data = {
            "enabled": t["enabled"],
            "total_queries": total,
            "slow_queries": t["slow_queries"],
            "slow_query_percentage": _percent(t["slow_queries"], total),
            "avg_duration": avg,
            "max_duration": t["max_duration_s"],
            "memory_usage_mb": process["memory_usage_mb"],
            "cpu_usage_percent": self._cpu_usage_percent(process["cpu_time_s"]),
            "avg_duration_s": avg,
            "max_duration_s": t["max_duration_s"],
            "total_duration_s": t["total_duration_s"],
            "queries_by_table": t["queries_by_table"],
            "queries_by_operation": t["queries_by_operation"],
            "requests_by_route": _routes(t["requests_by_route"]),
            "history": {
                "kept": t["kept"],
                "max_history": t["max_history"],
                "dropped": t["dropped"],
                "evicted": t["evicted"],
            },
            "process": process,
        }
        if "workers" in t:
            data["workers"] = t["workers"]
        return {"status": "success", "data": data}

    def _cpu_usage_percent(self, cpu: float) -> float:
        """CPU use (% of one core) since the previous stats call (first: since start)."""
        now = time.monotonic()
        with self._cpu_lock:
            (then, cpu_then), self._cpu_mark = self._cpu_mark, (now, cpu)
        return round(max(0.0, 100.0 * (cpu - cpu_then) / (now - then)), 1) if now > then else 0.0

    def report(self, query: dict[str, list[str]]) -> dict[str, Any]:
        max_history = self.history.max_history
        last_n = _int_param(query, "last_n_queries", min(100, max_history), 1, max_history)
        top = _int_param(query, "top", 10, 1, MAX_TOP)
        entries = self.history.entries(last_n)
        data = _aggregate(entries)
        data["top_slow_queries"] = _slowest(entries, top)
        return {"status": "success", "data": data}

    def slow_queries(self, query: dict[str, list[str]]) -> dict[str, Any]:
        threshold = _float_param(query, "threshold", self.slow_threshold_s)
        limit = _int_param(query, "limit", 20, 1, MAX_LIMIT)
        matching, slowest = self.history.slowest(threshold, limit)
        queries = [e.summary() for e in slowest]
        data = {
            "threshold_seconds": threshold,
            "threshold_s": threshold,
            "total_slow_queries": matching,
            "returned_queries": len(queries),
            "queries": queries,
        }
        return {"status": "success", "data": data}

    def details(self, raw_id: str) -> dict[str, Any]:
        if not _DIGITS.fullmatch(raw_id) or not 1 <= int(raw_id) <= MAX_ID:
            raise _bad("id", "id must be an integer >= 1")
        entry = self.history.get(int(raw_id))
        if entry is None:
            raise HTTPError(404, "not_found", "no query with this id in the history (it may have been evicted)")
        return {"status": "success", "data": entry.details()}

    def health(self, query: dict[str, list[str]]) -> dict[str, Any]:
        t = self.history.last_seen_totals()  # never waits on a pre-fork server's workers
        issues = []
        if not t["enabled"]:
            issues.append(f"profiler disabled: {t['dropped']} queries dropped")
        # a full history that evicts old queries is normal operation, not an issue (stats says so)
        return {
            "status": "degraded" if issues else "healthy",
            "enabled": t["enabled"],
            "total_queries": t["total_queries"],
            "slow_queries": t["slow_queries"],
            "issues": issues,
        }

    def toggle(self, query: dict[str, list[str]]) -> dict[str, Any]:
        self.history.enabled = _bool_param(query, "enable")
        return {"status": "success", "data": {"enabled": self.history.enabled}}

    def reset(self, query: dict[str, list[str]]) -> dict[str, Any]:
        self.history.reset()
        return {"status": "success", "data": {"reset": True}}

    def openapi(self, query: dict[str, list[str]]) -> dict[str, Any]:
        return document(self.history.max_history, self.slow_threshold_s, self.token_required)


def check_access(token: str | None, open_ok: bool, path: str, authorization: str | None, misdirected: str = "") -> None:
    """Raise the error a request gets before its parameters are looked at (421, 401), if any.

    ``open_ok``: without a token the request may be served (the port of its own: a loopback
    ``Host``; the mount is never served without a token). ``misdirected``: the 421's message.
    """
    if token is None and not open_ok:
        raise HTTPError(421, "misdirected_request", misdirected or "without a token this request is not served")
    if path != PREFIX + "health" and token is not None:
        given = (authorization or "").encode("utf-8", "replace")
        # Constant time: the comparison does not tell how much of a guess was right.
        if not hmac.compare_digest(given, b"Bearer " + token.encode()):
            raise HTTPError(
                401, "unauthorized", "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )


def check_browser(method: str, header: Callable[[str], str | None]) -> None:
    """Raise 403/415 for a state-changing request (``POST``) a web page of another origin can send.

    A page anywhere can make the user's browser POST to a loopback port (``fetch`` with
    ``mode: "no-cors"``, a form) without reading the answer: enough to toggle or reset. Browsers
    say where a request comes from: ``Sec-Fetch-Site`` (only ``same-origin`` and ``none``, typed
    by the user, pass), else ``Origin`` (must name the ``Host`` asked). A form or text body, what
    a page may send without asking first, is refused too, whatever the headers: no endpoint takes
    a body. Clients that are no browser (curl, scripts) send none of these and are not affected.
    """
    if method != "POST":
        return
    site = header("sec-fetch-site")
    if site is not None:
        if site.strip().lower() not in ("same-origin", "none"):
            raise HTTPError(403, "cross_site", "requests from web pages of other sites cannot change the profiler")
    else:
        origin, host = header("origin"), header("host")
        if origin is not None and (host is None or urlsplit(origin.strip()).netloc.lower() != host.strip().lower()):
            raise HTTPError(403, "cross_site", "requests from web pages of other origins cannot change the profiler")
    media = (header("content-type") or "").split(";", 1)[0].strip().lower()
    if media in _SIMPLE_BODIES:
        raise HTTPError(415, "unsupported_media_type", "no endpoint takes a body (form and text bodies are refused)")


def answer(api: API, method: str, path: str, query_string: str) -> dict[str, Any]:
    """The JSON body for one request that passed :func:`check_access`; raises :class:`HTTPError`."""
    if not path.startswith(PREFIX):
        raise HTTPError(404, "not_found", "unknown path")
    name = path[len(PREFIX) :]
    details = name.startswith("query-details/")
    if details:
        expected = "GET"
    elif name in api.routes:
        expected = api.routes[name][0]
    else:
        raise HTTPError(404, "not_found", "unknown path")
    if method != expected:
        raise HTTPError(405, "method_not_allowed", f"use {expected}", headers={"Allow": expected})
    try:
        query = parse_qs(query_string, keep_blank_values=True, strict_parsing=False, max_num_fields=50)
    except ValueError as exc:  # more than max_num_fields
        raise HTTPError(400, "bad_query", "too many query parameters") from exc
    try:
        return api.details(name[len("query-details/") :]) if details else api.routes[name][1](query)
    except ProfilerBusy as exc:
        raise HTTPError(503, "busy", "the workers are being asked for another request, retry later",
                         headers={"Retry-After": "1"}) from exc  # fmt: skip


def respond(
    api: API, token: str, method: str, path: str, query_string: str, authorization: str | None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, extra headers) of one request, outside the HTTP server (the mount,
    which is served only with a token: on the app's port a proxied request looks local)."""
    try:
        check_access(token, False, path, authorization)
        return 200, answer(api, method, path, query_string), {}
    except HTTPError as err:
        return err.status, error_body(err.code, err.message, err.parameter), dict(err.headers or {})


def mount_refusal(
    token: str, method: str, path: str, header: Callable[[str], str | None]
) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """What the mount answers by itself, before anything is relayed: 401 without the token
    (``health`` excepted), 403/415 for what a web page of another origin sends; None: go on."""
    try:
        check_access(token, False, path, header("authorization"))
        check_browser(method, header)
    except HTTPError as err:
        return err.status, error_body(err.code, err.message, err.parameter), dict(err.headers or {})
    return None


def make_api(history: HistoryView, slow_threshold_s: float, token_required: bool) -> API:
    """The endpoints over ``history``, for the mount (the HTTP server makes its own)."""
    return API(history, slow_threshold_s, token_required)


def error_body(code: str, message: str, parameter: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if parameter is not None:
        error["parameter"] = parameter
    return {"status": "error", "error": error}
