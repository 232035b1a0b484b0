"""Calls to key-value and document stores: classified apart from SQL queries, rolled up per request.

A client span whose ``db.system.name`` (or ``db.system``) names one of :data:`NOSQL_SYSTEMS`
is a *call*, not a query: it never enters the request's SQL counts, its SQL N+1 verdict, the
duplicate-SELECT judgement, the slow-query log or the profiler, and of the metrics only
``db.client.operation.duration`` (with its own ``db.system.name``) records it. Every other
system (postgresql, mysql, mariadb, sqlite, mssql, oracle, and anything unknown) keeps the
SQL treatment.

The request's root span gets the calls' roll-up (count, time, slow calls, per system) and a
verdict of its own when one command of one system repeats ``DBPERF_N_PLUS_ONE_THRESHOLD``
times or more: the same command N times is one batched command (``MGET`` for Redis ``GET``)
or a pipeline.

A call with no application frame on the stack is the framework's own traffic (a Celery
worker's broker polling and result-backend writes, which run inside the task's span): it is
exported and measured (metrics) like any call, but not rolled up into the request or task.
"""

from __future__ import annotations

from typing import Any

from . import _forksafe
from . import attributes as A

#: db.system.name / db.system values read as key-value and document stores (the rest is SQL)
NOSQL_SYSTEMS = frozenset(
    {
        "redis",
        "valkey",
        "memcached",
        "mongodb",
        "elasticsearch",
        "opensearch",
        "cassandra",
        "scylla",
        "couchbase",
        "couchdb",
        "dynamodb",
        "aws.dynamodb",
        "azure.cosmosdb",
        "cosmosdb",
        "hbase",
        "geode",
        "neo4j",
        "influxdb",
    }
)

# The kinds of a query (Query.kind, set by the processor when its span ends)
KIND_QUERY, KIND_SETUP, KIND_NOSQL, KIND_NOSQL_FRAMEWORK, KIND_CURSOR_FETCH = 0, 1, 2, 3, 4

MAX_CALLS = 10_000  # calls of one request kept for its roll-up; past it they are not counted
_lock = _forksafe.lock("nosql.calls")

# Redis commands with a multi-key / multi-value form
_REDIS_BATCH = {
    "GET": "MGET",
    "SET": "MSET",
    "HGET": "HMGET",
    "HSET": "HSET with several fields",
    "HGETALL": "a pipeline",
    "DEL": "DEL with several keys",
    "UNLINK": "UNLINK with several keys",
    "EXISTS": "EXISTS with several keys",
    "SADD": "SADD with several members",
    "SREM": "SREM with several members",
    "SISMEMBER": "SMISMEMBER",
    "ZADD": "ZADD with several members",
    "ZSCORE": "ZMSCORE",
    "LPUSH": "LPUSH with several values",
    "RPUSH": "RPUSH with several values",
    "INCR": "a pipeline",
    "EXPIRE": "a pipeline",
}
_MEMCACHED_BATCH = {"GET": "get_multi", "SET": "set_multi", "DELETE": "delete_multi"}


def add_call(request: Any, query: Any) -> None:
    """Request thread: keep one of the request's calls (bounded; past the cap they are not counted)."""
    calls = request.calls
    if calls is None:
        with _lock:  # two threads of one request (rare): one list
            calls = request.calls
            if calls is None:
                calls = request.calls = []
    if len(calls) < MAX_CALLS:
        calls.append(query)


def suggestion(system: str, operation: str) -> str:
    """How to batch ``operation`` repeated N times on ``system``."""
    if system in ("redis", "valkey"):
        return _REDIS_BATCH.get(operation, "a pipeline")
    if system == "memcached":
        return _MEMCACHED_BATCH.get(operation, "one multi-key call")
    if system == "mongodb":
        return "one query with $in" if operation in ("FIND", "FINDONE") else "one bulk operation"
    return "one batched call"


def operation_of(query: Any, max_length: int) -> str:
    """The call's command (``GET``), from its analysis (made once, kept on the query)."""
    analysis = query.analysis(max_length)
    return analysis.operation if analysis is not None else ""


def nosql_rollup(calls: list[Any], threshold: int, max_length: int) -> dict[str, Any]:
    """Export thread: the root-span attributes of a request's calls (see attributes.py)."""
    attrs: dict[str, Any] = {}
    count, total_ns, slow = 0, 0, 0
    per_system: dict[str, list[int]] = {}
    repeats: dict[tuple[str, str], list[Any]] = {}  # (system, operation) -> [count, first call]
    for query in list(calls):
        count += 1
        total_ns += query.duration_ns
        slow += query.slow
        system = str(query.system)
        figures = per_system.get(system)
        if figures is None:
            figures = per_system[system] = [0, 0]
        figures[0] += 1
        figures[1] += query.duration_ns
        key = (system, operation_of(query, max_length))
        seen = repeats.get(key)
        if seen is None:
            repeats[key] = [1, query]
        else:
            seen[0] += 1
    attrs[A.NOSQL_CALL_COUNT] = count
    attrs[A.NOSQL_DURATION_MS] = total_ns / 1e6
    attrs[A.NOSQL_SLOW_CALL_COUNT] = slow
    for system, (n, ns) in per_system.items():
        attrs[f"dbperf.nosql.{system}.call_count"] = n
        attrs[f"dbperf.nosql.{system}.duration_ms"] = ns / 1e6
    worst_key, worst = ("", ""), 0
    for key, (n, _) in repeats.items():
        if n > worst:
            worst_key, worst = key, n
    detected = worst >= threshold
    attrs[A.NOSQL_REPEAT_DETECTED] = detected
    if detected:
        system, operation = worst_key
        first = repeats[worst_key][1]
        attrs[A.NOSQL_REPEAT_SYSTEM] = system
        if operation:
            attrs[A.NOSQL_REPEAT_OPERATION] = operation
        attrs[A.NOSQL_REPEAT_COUNT] = worst
        if first.location is not None:
            attrs[A.NOSQL_REPEAT_CODE_LOCATION] = f"{first.location[0]}:{first.location[1]}"
        attrs[A.NOSQL_REPEAT_SUGGESTION] = suggestion(system, operation)
    return attrs
