"""The OpenAPI 3.0 document of the profiler API, built for one server's limits and auth.

Every object schema closes ``additionalProperties`` so that a schema-driven fuzzer
(tests/test_profiler_api.py runs schemathesis) notices any field the code adds or renames.
"""

from __future__ import annotations

from typing import Any

MAX_LIMIT = 1000  # the largest ``limit`` of /slow-queries
MAX_TOP = 100  # the largest ``top`` of /report
MAX_ID = 2**63 - 1

_JSON = "application/json"
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _success(data: dict[str, Any]) -> dict[str, Any]:
    return _object({"status": {"type": "string", "enum": ["success"]}, "data": data})


_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer", "minimum": 0}
_NUM: dict[str, Any] = {"type": "number", "minimum": 0}
_BOOL: dict[str, Any] = {"type": "boolean"}
_COUNTS: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}


def _schemas() -> dict[str, Any]:
    seed: dict[str, Any] = {  # seed 000's names and units
        "query": {"type": "string", "description": "the sanitized statement (literals replaced by ?)"},
        "duration": {"type": "number", "minimum": 0, "description": "seconds"},
        "query_type": {"type": "string", "enum": ["read", "write", "other"]},
        "memory_delta": {
            "type": "number",
            "nullable": True,
            "description": "process RSS change over the query, MB; null: not sampled (DBPERF_RESOURCE_SAMPLES=query)",
        },
        "cpu_percent": {
            "type": "number",
            "nullable": True,
            "minimum": 0,
            "maximum": 100,
            "description": "CPU time of the querying thread over the query's duration; null: not sampled",
        },
    }
    summary: dict[str, Any] = dict(seed)
    summary["has_stack_trace"] = _BOOL
    summary.update(
        {
            "id": {"type": "integer", "minimum": 1},
            "timestamp": {"type": "number", "description": "unix seconds"},
            "duration_s": _NUM,
            "statement": {"type": "string", "description": "sanitized: literals replaced by ?"},
            "fingerprint": _STR,
            "operation": _STR,
            "table": _STR,
            "db_system": _STR,
            "slow": _BOOL,
            "code_location": {"type": "string", "description": "file:line of the application code, or empty"},
            "trace_id": {"type": "string", "pattern": "^([0-9a-f]{32})?$"},
            "route": _STR,
            "cpu_time_ms": {"type": "number", "nullable": True},
            "error_type": _STR,
            "has_stacktrace": _BOOL,
            "has_plan": _BOOL,
            "pid": {"type": "integer", "minimum": 0, "description": "the process (worker) that ran the query"},
            "service_instance_id": _STR,
            "relationship": {
                "type": "string",
                "description": "the SQLAlchemy relationship this query lazily loaded (e.g. Author.books), or empty",
            },
            "suggestion": {
                "type": "string",
                "description": "the loader option that loads that relationship up front, in one query for all "
                "rows (e.g. selectinload(Author.books), joinedload(Book.author)): the fix when the lazy load "
                "repeats per row (N+1); or empty",
            },
        }
    )
    details = {k: v for k, v in summary.items() if not k.startswith("has_")}
    details.update(
        {
            "stack_trace": {
                "type": "array",
                "items": _STR,
                "description": "the application frames that issued the query, one line per item (most recent "
                "call last); empty for a query under DBPERF_STACKTRACE_THRESHOLD_MS (500 ms by default)",
            },
            "function": _STR,
            "stacktrace": _STR,
            "plan": {"type": "string", "nullable": True},
            "plan_format": {"type": "string", "nullable": True},
            "verdict": {"type": "string", "nullable": True},
            "span_id": {"type": "string", "pattern": "^([0-9a-f]{16})?$"},
            "memory_delta_bytes": {"type": "integer", "nullable": True},
        }
    )
    aggregate: dict[str, Any] = {
        "total_queries": _INT,
        "slow_queries": _INT,
        "slow_query_percentage": {"type": "number", "minimum": 0, "maximum": 100},
        "avg_duration_s": _NUM,
        "max_duration_s": _NUM,
        "total_duration_s": _NUM,
        "avg_duration": {"type": "number", "minimum": 0, "description": "seconds"},
        "max_duration": {"type": "number", "minimum": 0, "description": "seconds"},
    }
    stats = dict(aggregate)
    stats.update(
        {
            "memory_usage_mb": {"type": "number", "minimum": 0, "description": "RSS of the process(es), MiB"},
            "cpu_usage_percent": {"type": "number", "minimum": 0, "description": "% of one core since the last stats"},
            "enabled": _BOOL,
            "queries_by_table": _COUNTS,
            "queries_by_operation": _COUNTS,
            "requests_by_route": {
                "type": "object",
                "description": "finished requests by route (at most 100 routes, the rest under _other)",
                "additionalProperties": _object(
                    {
                        "requests": _INT,
                        "db_queries": _INT,
                        "db_duration_s": _NUM,
                        "pool_wait_ms": {**_NUM, "description": "summed wait for a pooled connection"},
                        "max_pool_wait_ms": {**_NUM, "description": "the longest wait of one request"},
                        "pool_waited_requests": {**_INT, "description": "requests that waited at all"},
                        "pool_timeouts": {**_INT, "description": "checkouts that timed out"},
                        "cpu_bound_requests": {**_INT, "description": "CPU-bound requests (dbperf.request.cpu_bound)"},
                        "http_n_plus_one_requests": {
                            **_INT,
                            "description": "requests repeating an outgoing HTTP route (dbperf.request.http.n_plus_one)",
                        },
                        "event_loop_blocked_requests": {
                            **_INT,
                            "description": "requests that blocked the asyncio event loop (dbperf.event_loop_blocked)",
                        },
                        "sequential_queries_requests": {
                            **_INT,
                            "description": "requests awaiting independent queries in turn "
                            "(dbperf.request.sequential_queries)",
                        },
                    }
                ),
            },
            "history": _object({"kept": _INT, "max_history": _INT, "dropped": _INT, "evicted": _INT}),
            "process": _object({"memory_rss_bytes": _INT, "memory_usage_mb": _NUM, "cpu_time_s": _NUM}),
            "workers": _object(
                {
                    "live": _INT,
                    "pids": {"type": "array", "items": _INT},
                    "unresponsive": _INT,
                    "exited": _INT,
                    "killed": _INT,
                    "lost_entries": _INT,
                }
            ),
        }
    )
    stats_required = [name for name in stats if name != "workers"]  # workers: under a pre-fork server only
    report = dict(aggregate)
    report["top_slow_queries"] = {"type": "array", "items": _ref("QuerySummary")}
    slow: dict[str, Any] = {
        "threshold_seconds": _NUM,
        "threshold_s": _NUM,
        "total_slow_queries": _INT,
        "returned_queries": _INT,
        "queries": {"type": "array", "items": _ref("QuerySummary")},
    }
    return {
        "QuerySummary": _object(summary),
        "QueryDetails": _object(details),
        "Stats": _success(_object(stats, stats_required)),
        "Report": _success(_object(report)),
        "SlowQueries": _success(_object(slow)),
        "Details": _success(_ref("QueryDetails")),
        "Toggle": _success(_object({"enabled": _BOOL})),
        "Reset": _success(_object({"reset": {"type": "boolean", "enum": [True]}})),
        "Health": _object(
            {
                "status": {"type": "string", "enum": ["healthy", "degraded"]},
                "enabled": _BOOL,
                "total_queries": _INT,
                "slow_queries": _INT,
                "issues": {"type": "array", "items": _STR},
            }
        ),
        "Error": _object(
            {
                "status": {"type": "string", "enum": ["error"]},
                "error": _object(
                    {
                        "code": _STR,
                        "message": _STR,
                        "parameter": {"type": "string", "description": "the offending parameter"},
                    },
                    required=["code", "message"],
                ),
            }
        ),
    }


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}
    if headers:
        response["headers"] = headers
    return response


def _responses(token_required: bool) -> dict[str, Any]:
    header = {"required": True, "schema": _STR}
    responses = {
        "BadRequest": _error("a parameter is malformed or out of range (error.parameter names it)"),
        "NotFound": _error("no such query in the history"),
        "MethodNotAllowed": _error("the path takes another method", {"Allow": header}),
        "TooLarge": _error("request body over the limit"),
        "CrossSite": _error("sent by a web page of another origin (Sec-Fetch-Site, Origin)"),
        "BodyRefused": _error("a form or text body: no endpoint takes one"),
        "Busy": _error("a pre-fork server's workers are being asked for another request", {"Retry-After": header}),
    }
    if token_required:
        responses["Unauthorized"] = _error("missing or wrong bearer token", {"WWW-Authenticate": header})
    return responses


def _param(name: str, location: str, schema: dict[str, Any], description: str, required: bool = False) -> Any:
    return {"name": name, "in": location, "required": required, "schema": schema, "description": description}


def _operation(
    op_id: str,
    summary: str,
    ok: str,
    params: list[Any],
    token_required: bool,
    *,
    public: bool = False,
    not_found: bool = False,
    changes_state: bool = False,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": summary, "content": {_JSON: {"schema": _ref(ok)}}},
        "400": {"$ref": "#/components/responses/BadRequest"},
        "405": {"$ref": "#/components/responses/MethodNotAllowed"},
        "413": {"$ref": "#/components/responses/TooLarge"},
    }
    if not_found:
        responses["404"] = {"$ref": "#/components/responses/NotFound"}
    if changes_state:
        responses["403"] = {"$ref": "#/components/responses/CrossSite"}
        responses["415"] = {"$ref": "#/components/responses/BodyRefused"}
    if not public:
        responses["503"] = {"$ref": "#/components/responses/Busy"}
    if token_required and not public:
        responses["401"] = {"$ref": "#/components/responses/Unauthorized"}
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "parameters": params, "responses": responses}
    if public:
        op["security"] = []  # health stays open for liveness probes
    return op


def int_range(low: int, high: int, default: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, "default": default}


def document(max_history: int, slow_threshold_s: float, token_required: bool) -> dict[str, Any]:
    """The OpenAPI document for a server keeping ``max_history`` queries."""
    t = token_required
    paths = {
        "/profiler/stats": {
            "get": _operation("stats", "totals since start or reset, and process memory / CPU", "Stats", [], t)
        },
        "/profiler/report": {
            "get": _operation(
                "report",
                "totals over the last N queries and the slowest of them",
                "Report",
                [
                    _param(
                        "last_n_queries",
                        "query",
                        int_range(1, max_history, min(100, max_history)),
                        "how many of the latest queries",
                    ),
                    _param("top", "query", int_range(1, MAX_TOP, 10), "how many slow queries to list"),
                ],
                t,
            )
        },
        "/profiler/slow-queries": {
            "get": _operation(
                "slowQueries",
                "kept queries at or above a duration, slowest first",
                "SlowQueries",
                [
                    _param(
                        "threshold",
                        "query",
                        {"type": "number", "minimum": 0, "default": slow_threshold_s},
                        "seconds; default: the configured slow-query threshold",
                    ),
                    _param("limit", "query", int_range(1, MAX_LIMIT, 20), "how many to return"),
                ],
                t,
            )
        },
        "/profiler/query-details/{id}": {
            "get": _operation(
                "queryDetails",
                "one kept query in full: statement, code location, stack, plan, trace and span ids",
                "Details",
                [
                    _param(
                        "id",
                        "path",
                        {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID, "example": 1},
                        "the query id",
                        required=True,
                    )
                ],
                t,
                not_found=True,
            )
        },
        "/profiler/health": {
            "get": _operation("health", "healthy, or degraded with the issues", "Health", [], t, public=True)
        },
        "/profiler/toggle": {
            "post": _operation(
                "toggle",
                "enable or disable recording",
                "Toggle",
                [_param("enable", "query", {"type": "boolean"}, "true or false", required=True)],
                t,
                changes_state=True,
            )
        },
        "/profiler/reset": {
            "post": _operation("reset", "forget the history and the totals", "Reset", [], t, changes_state=True)
        },
        "/profiler/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "this document",
                "responses": {
                    "200": {"description": "the OpenAPI document", "content": {_JSON: {"schema": {"type": "object"}}}},
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "405": {"$ref": "#/components/responses/MethodNotAllowed"},
                    "413": {"$ref": "#/components/responses/TooLarge"},
                    **({"401": {"$ref": "#/components/responses/Unauthorized"}} if t else {}),
                },
            }
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "otel-dbperf profiler",
            "version": "1",
            "description": "The in-process query history of otel-dbperf (see docs/profiler.md).",
        },
        "paths": paths,
        "components": {"schemas": _schemas(), "responses": _responses(t)},
    }
    if t:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
