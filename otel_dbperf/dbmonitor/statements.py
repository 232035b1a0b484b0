"""Workload statistics per fingerprint: ``db.server.top_query`` log records, one per fingerprint per interval.

:func:`emit_statements` reads the server's statement statistics (PostgreSQL ``pg_stat_statements``,
MariaDB/MySQL ``performance_schema.events_statements_summary_by_digest``), at most :data:`MAX_STATEMENTS`
rows (the most total time first), and keeps each row's counters in this process: a call emits what
happened since the previous call, per app fingerprint, so a record is the workload of one interval
and records add up. The first call on a connection only takes the baseline (it emits nothing).

The server normalizes its own way (``$1`` placeholders, its IN-list forms, the first text seen for a
query id, sqlcommenter comment included); each server text goes through :mod:`otel_dbperf._sql`
exactly like the app's statements (comments dropped, every literal and placeholder ``?``, IN-lists
collapsed), so the record's ``dbperf.query.fingerprint`` is the app's. Server statements that normalize
alike (an IN-list of 3 and of 4 values: two query ids) are summed into one record.

Queries per call: PostgreSQL one (the counters, without texts), plus one for the texts of the query
ids seen for the first time (kept, bounded); MariaDB/MySQL one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from opentelemetry._logs import Logger

from .._guard import internal_error
from .samples import DIALECTS, TOP_QUERY_EVENT, emit, fetch, statement_attributes, warn_once

# server statements read per call (by total time): the whole view at its default sizes
# (pg_stat_statements.max 5000; MariaDB's digest table up to 10000). A cap of 1000 left out a new
# statement whose cumulative time was not yet among the busiest, on a server with a long history.
MAX_STATEMENTS = 20_000
_TEXTS = 20_000  # query id -> (fingerprint, attributes) kept
_CONNECTIONS = 8  # connections whose previous counters are kept (a reconnect starts a new baseline)
# statements reading the views the monitor reads are the monitor's (or another monitor's) own: left out
_OWN_VIEWS = ("pg_stat_statements", "pg_stat_activity", "events_statements_summary_by_digest", "processlist")
_OWN: dict[str, Any] = {}  # the text attributes of such a statement

# counters per server statement: calls, total ms, rows, shared blocks hit, read, temp blocks written
PG_COUNTERS_SQL = f"""
SELECT s.queryid, s.userid, s.dbid, s.toplevel, d.datname, s.calls, s.total_exec_time, s.rows,
       s.shared_blks_hit, s.shared_blks_read, s.temp_blks_written
FROM pg_stat_statements(false) s JOIN pg_database d ON d.oid = s.dbid
WHERE s.queryid IS NOT NULL
ORDER BY s.total_exec_time DESC
LIMIT {MAX_STATEMENTS}
"""
# one statement whatever the number of ids (an array parameter: psycopg's %s)
PG_TEXTS_SQL = "SELECT DISTINCT ON (queryid) queryid, query FROM pg_stat_statements WHERE queryid = ANY(%s)"
PG_FIELDS = ("calls", "total_exec_time_ms", "rows", "shared_blks_hit", "shared_blks_read", "temp_blks_written")

# MariaDB / MySQL: the digest's counters; times in picoseconds
MYSQL_DIGESTS_SQL = f"""
SELECT DIGEST, SCHEMA_NAME, DIGEST_TEXT, COUNT_STAR, SUM_TIMER_WAIT / 1000000000, SUM_ROWS_SENT,
       SUM_ROWS_EXAMINED, SUM_NO_INDEX_USED, SUM_SELECT_SCAN, SUM_CREATED_TMP_DISK_TABLES
FROM performance_schema.events_statements_summary_by_digest
WHERE DIGEST IS NOT NULL
ORDER BY SUM_TIMER_WAIT DESC
LIMIT {MAX_STATEMENTS}
"""
MYSQL_FIELDS = ("calls", "total_time_ms", "rows_sent", "rows_examined", "no_index_used", "full_scans",
                "tmp_disk_tables")  # fmt: skip


class _State:
    def __init__(self) -> None:
        # (connection id, dialect) -> server statement key -> its counters at the previous call
        self.previous: OrderedDict[tuple[int, str], dict[Any, tuple[float, ...]]] = OrderedDict()
        # (dialect, query id / digest) -> the sanitized statement's attributes
        self.texts: OrderedDict[tuple[str, Any], dict[str, Any]] = OrderedDict()


_state = _State()


def _attributes(text: str, dialect: str) -> dict[str, Any]:
    low = text.lower()
    if any(view in low for view in _OWN_VIEWS):
        return _OWN
    return statement_attributes(text, dialect)


def _remember(key: tuple[str, Any], attrs: dict[str, Any]) -> None:
    _state.texts[key] = attrs
    if len(_state.texts) > _TEXTS:
        _state.texts.popitem(last=False)


def _delta(now: tuple[float, ...], before: tuple[float, ...] | None) -> tuple[float, ...]:
    """What happened since ``before``; all of ``now`` after a reset (fewer calls than before)."""
    if before is None or now[0] < before[0]:
        return now
    return tuple(a - b for a, b in zip(now, before, strict=True))


def _pg_texts(conn: Any, ids: list[int]) -> None:
    if not ids:
        return
    for queryid, query in fetch(conn, PG_TEXTS_SQL, "postgresql statement texts", [list(ids)]) or ():
        _remember(("postgresql", int(queryid)), _attributes(query or "", "postgresql"))


def _totals(
    conn: Any, dialect: str, rows: Sequence[Sequence[Any]]
) -> tuple[dict[Any, tuple[float, ...]], dict[Any, tuple[Any, str | None]]]:
    """Per server statement: its counters, and (text key, database)."""
    counters: dict[Any, tuple[float, ...]] = {}
    where: dict[Any, tuple[Any, str | None]] = {}
    if dialect == "postgresql":
        for queryid, userid, dbid, toplevel, datname, *values in rows:
            key: tuple[Any, ...] = (int(queryid), int(userid), int(dbid), bool(toplevel))
            counters[key] = tuple(float(v or 0) for v in values)
            where[key] = (("postgresql", int(queryid)), datname)
        _pg_texts(conn, sorted({k[0] for k in counters if ("postgresql", k[0]) not in _state.texts}))
    else:
        for digest, schema, text, *values in rows:
            key = (str(digest), schema)
            counters[key] = tuple(float(v or 0) for v in values)
            where[key] = (("mysql", key), schema)
            if ("mysql", key) not in _state.texts:
                _remember(("mysql", key), _attributes(text or "", "mysql"))
    return counters, where


def _emit_deltas(
    logger: Logger,
    dialect: str,
    counters: dict[Any, tuple[float, ...]],
    where: dict[Any, tuple[Any, str | None]],
    before: dict[Any, tuple[float, ...]],
) -> int:
    fields = PG_FIELDS if dialect == "postgresql" else MYSQL_FIELDS
    merged: dict[tuple[str, str | None], list[Any]] = {}  # (fingerprint, database) -> [attrs, sums, statements]
    for key, now in counters.items():
        delta = _delta(now, before.get(key))
        if delta[0] <= 0:
            continue
        text_key, database = where[key]
        attrs = _state.texts.get(text_key)
        if attrs is None or attrs is _OWN:  # its text could not be read, or a monitor's own statement
            continue
        entry = merged.setdefault((attrs["dbperf.query.fingerprint"], database), [attrs, [0.0] * len(fields), 0])
        entry[1] = [a + b for a, b in zip(entry[1], delta, strict=True)]
        entry[2] += 1
    stamp = time.time_ns()
    for (_, database), (attrs, sums, statements) in merged.items():
        out: dict[str, Any] = {"db.system.name": dialect, "db.namespace": database, **attrs}
        for name, value in zip(fields, sums, strict=True):
            out[f"{dialect}.{name}"] = round(value, 3) if name.endswith("_ms") else int(value)
        calls = sums[0]
        total_ms = sums[1]
        out[f"{dialect}.mean_time_ms"] = round(total_ms / calls, 3) if calls else 0.0
        out[f"{dialect}.statements"] = statements
        body = f"{int(calls)} calls, {total_ms:.1f} ms: {attrs.get('db.query.text', '')}"
        emit(logger, TOP_QUERY_EVENT, out, body, None, stamp)
    return len(merged)


def emit_statements(conn: Any, dialect: str, logger: Logger) -> int:
    """One ``db.server.top_query`` record per fingerprint (and database) with calls since the previous
    call on this connection; the number emitted. Never raises."""
    if dialect not in DIALECTS:
        warn_once(f"statements:dialect:{dialect}", "otel-dbperf dbmonitor: no statement statistics for %r", dialect)
        return 0
    sql = PG_COUNTERS_SQL if dialect == "postgresql" else MYSQL_DIGESTS_SQL
    what = "pg_stat_statements" if dialect == "postgresql" else "performance_schema statement digests"
    rows = fetch(conn, sql, what)
    if rows is None:
        return 0
    try:
        counters, where = _totals(conn, dialect, rows)
        conn_key = (id(conn), dialect)
        before = _state.previous.pop(conn_key, None)
        _state.previous[conn_key] = counters
        if len(_state.previous) > _CONNECTIONS:
            _state.previous.popitem(last=False)
        if before is None:
            return 0  # the baseline
        return _emit_deltas(logger, dialect, counters, where, before)
    except Exception as exc:  # noqa: BLE001 - a bug here never stops the monitor (re-raised under pytest)
        internal_error("dbmonitor.statements", exc, "that interval's statement statistics are skipped")
        return 0
