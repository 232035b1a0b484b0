"""Query samples: the server's view of each busy session, as one log record each, linked to the trace.

:func:`emit_samples` reads, in ONE query per call, the sessions of the server that are doing
something (PostgreSQL: ``pg_stat_activity`` rows of client backends not ``idle``, so running,
waiting, or idle inside an open transaction; MariaDB/MySQL: ``information_schema.PROCESSLIST``
rows not sleeping, or sleeping inside an InnoDB transaction), at most :data:`MAX_SESSIONS`, and
emits one ``db.server.query_sample`` log record per session:

- ``db.query.text``: the statement sanitized by :mod:`otel_dbperf._sql` (literals ``?``,
  comments gone: the sqlcommenter comment too), never the raw text; ``dbperf.query.fingerprint``
  the app's fingerprint of it; ``db.query.summary``.
- the record's trace and span id: the ``traceparent`` of the statement's sqlcommenter comment
  (``DBPERF_SQLCOMMENTER=true`` in the app), read from a comment token only (a ``traceparent=``
  inside a string literal is a value, not a link). A session idle in a transaction shows its last
  statement: the request that left the transaction open.
- who waits on whom: ``postgresql.blocking_pids`` (``pg_blocking_pids``, asked only for sessions
  waiting on a lock) / ``mysql.blocking_thread_ids`` (InnoDB lock waits); each blocker is itself
  sampled (it holds a transaction), so its record names the blocker's trace.

The join of a sample to its request happens here, at the source: the record carries the trace
context, so Jaeger, Loki or the file find it by trace id with no join step anywhere else.

Nothing here raises: a failed query (a database that went away, a missing privilege) is one
warning per kind of failure on the ``otel_dbperf.dbmonitor`` logger and a return of 0.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import Logger, LogRecord, SeverityNumber
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from .. import _sql
from .._guard import internal_error
from ..settings import current_settings

log = logging.getLogger("otel_dbperf.dbmonitor")

SAMPLE_EVENT = "db.server.query_sample"
TOP_QUERY_EVENT = "db.server.top_query"
MAX_SESSIONS = 200  # sessions sampled per call (the longest-running first)
DIALECTS = ("postgresql", "mysql")

_TRACEPARENT = re.compile(r"traceparent\s*=\s*'?([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_warned: set[str] = set()

PG_SAMPLE_SQL = f"""
SELECT a.pid, a.datname, a.state, a.wait_event_type, a.wait_event,
       extract(epoch FROM clock_timestamp() - a.query_start) * 1000,
       extract(epoch FROM clock_timestamp() - a.state_change) * 1000,
       extract(epoch FROM clock_timestamp() - a.xact_start) * 1000,
       CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END,
       a.query
FROM pg_stat_activity a
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND a.state <> 'idle'
ORDER BY a.query_start NULLS LAST
LIMIT {MAX_SESSIONS}
"""

# MariaDB's PROCESSLIST (TIME_MS) and InnoDB's lock-wait tables; the blockers as a comma list.
MYSQL_SAMPLE_SQL = f"""
SELECT p.ID, p.DB, p.COMMAND, p.STATE, p.TIME_MS,
       TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) / 1000,
       (SELECT GROUP_CONCAT(DISTINCT b.trx_mysql_thread_id)
          FROM information_schema.INNODB_LOCK_WAITS w
          JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id
         WHERE w.requesting_trx_id = t.trx_id),
       p.INFO
FROM information_schema.PROCESSLIST p
LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID
WHERE p.ID <> CONNECTION_ID() AND (p.COMMAND <> 'Sleep' OR t.trx_id IS NOT NULL)
  AND p.COMMAND NOT IN ('Daemon', 'Binlog Dump', 'Slave_IO', 'Slave_SQL')
ORDER BY p.TIME_MS DESC
LIMIT {MAX_SESSIONS}
"""


def warn_once(key: str, message: str, *args: Any) -> None:
    """One warning per ``key`` for the life of the process (a monitor runs for months)."""
    if key in _warned:
        return
    if len(_warned) < 1000:
        _warned.add(key)
    log.warning(message, *args)


def db_error_text(exc: BaseException) -> str:
    """What a failed monitoring query says about itself: the error's type and SQLSTATE/code, never
    its message (a server message can quote a statement's values)."""
    code = getattr(getattr(exc, "diag", None), "sqlstate", None) or getattr(exc, "sqlstate", None)
    if code is None and getattr(exc, "args", None) and isinstance(exc.args[0], int):
        code = exc.args[0]  # PyMySQL: (errno, message)
    return f"{type(exc).__name__}" + (f" ({code})" if code else "")


def fetch(conn: Any, sql: str, where: str, params: Sequence[Any] | None = None) -> list[Sequence[Any]] | None:
    """The rows of one monitoring query, or None (warned once) when it failed."""
    try:
        cur = conn.cursor()
        try:
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            return list(cur.fetchall())
        finally:
            cur.close()
    except Exception as exc:  # noqa: BLE001 - the database's failures never reach the loop
        warn_once(
            f"{where}:{type(exc).__name__}",
            "otel-dbperf dbmonitor: %s failed: %s; retried at the next interval (warned once)",
            where,
            db_error_text(exc),
        )
        return None


def traceparent_of(statement: str, dialect: str) -> tuple[int, int, int] | None:
    """(trace id, span id, flags) of the last ``traceparent`` in a comment of ``statement``."""
    if "traceparent" not in statement:
        return None
    readings = _sql.code_tokens(statement, dialect)
    if not readings:
        return None
    found = None
    for kind, text in readings[0]:
        if kind == "C":
            for match in _TRACEPARENT.finditer(text):
                if match[1] != "ff":
                    found = match
    if found is None:
        return None
    trace_id, span_id = int(found[2], 16), int(found[3], 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(found[4], 16)


def statement_attributes(statement: str, dialect: str) -> dict[str, Any]:
    """``db.query.text`` (sanitized), ``db.query.summary`` and ``dbperf.query.fingerprint`` of a
    server-side statement text, by the same code as the app's spans."""
    analysis = _sql.analyze(statement, current_settings().statement_max_length, dialect)
    out: dict[str, Any] = {"db.query.text": analysis.sanitized, "dbperf.query.fingerprint": analysis.fingerprint}
    if analysis.summary:
        out["db.query.summary"] = analysis.summary
    return out


def emit(
    logger: Logger,
    event: str,
    attributes: Mapping[str, Any],
    body: str,
    link: tuple[int, int, int] | None = None,
    now_ns: int | None = None,
) -> None:
    context = None
    if link is not None:
        span_context = SpanContext(link[0], link[1], is_remote=True, trace_flags=TraceFlags(link[2] & 0xFF))
        context = trace.set_span_in_context(NonRecordingSpan(span_context))
    stamp = now_ns or time.time_ns()
    logger.emit(
        LogRecord(
            timestamp=stamp,
            observed_timestamp=stamp,
            context=context,
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body=body,
            attributes={"event.name": event, **{k: v for k, v in attributes.items() if v is not None}},
            event_name=event,
        )
    )


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _pg_record(row: Sequence[Any]) -> tuple[dict[str, Any], tuple[int, int, int] | None]:
    pid, datname, state, wait_type, wait_event, query_ms, state_ms, xact_ms, blocking, query = row
    text = query if isinstance(query, str) else ""
    attrs: dict[str, Any] = {
        "db.system.name": "postgresql",
        "db.namespace": datname,
        "postgresql.pid": int(pid),
        "postgresql.state": state,
        "postgresql.wait_event_type": wait_type,
        "postgresql.wait_event": wait_event,
        "postgresql.query_duration_ms": _ms(query_ms),
        "postgresql.state_duration_ms": _ms(state_ms),
        "postgresql.transaction_duration_ms": _ms(xact_ms),
        "postgresql.blocking_pids": [int(p) for p in blocking] if blocking else None,
    }
    if text:
        attrs.update(statement_attributes(text, "postgresql"))
    return attrs, traceparent_of(text, "postgresql") if text else None


def _mysql_record(row: Sequence[Any]) -> tuple[dict[str, Any], tuple[int, int, int] | None]:
    thread_id, db, command, state, time_ms, xact_ms, blocking, info = row
    if isinstance(info, bytes):
        info = info.decode("utf-8", "replace")
    text = info if isinstance(info, str) else ""
    blockers = [int(b) for b in str(blocking).split(",") if b.strip().isdigit()] if blocking else None
    attrs: dict[str, Any] = {
        "db.system.name": "mysql",
        "db.namespace": db,
        "mysql.thread_id": int(thread_id),
        "mysql.command": command,
        "mysql.state": state or None,
        "mysql.query_duration_ms": _ms(time_ms) if text else None,
        "mysql.transaction_duration_ms": _ms(xact_ms),
        "mysql.blocking_thread_ids": blockers or None,
    }
    if text:
        attrs.update(statement_attributes(text, "mysql"))
    return attrs, traceparent_of(text, "mysql") if text else None


def _body(attrs: Mapping[str, Any]) -> str:
    state = attrs.get("postgresql.state") or attrs.get("mysql.command") or ""
    waiting = attrs.get("postgresql.wait_event_type")
    if waiting:
        state = f"{state}, waiting on {waiting}/{attrs.get('postgresql.wait_event')}"
    blockers = attrs.get("postgresql.blocking_pids") or attrs.get("mysql.blocking_thread_ids")
    if blockers:
        state += f", blocked by {', '.join(str(b) for b in blockers)}"
    return f"{state}: {attrs.get('db.query.text', '')}".strip()


def _records(rows: Iterable[Sequence[Any]], dialect: str, logger: Logger) -> int:
    make = _pg_record if dialect == "postgresql" else _mysql_record
    now = time.time_ns()
    emitted = 0
    for row in rows:
        attrs, link = make(row)
        emit(logger, SAMPLE_EVENT, attrs, _body(attrs), link, now)
        emitted += 1
    return emitted


def emit_samples(conn: Any, dialect: str, logger: Logger) -> int:
    """One ``db.server.query_sample`` log record per busy server session (one query per call, at most
    :data:`MAX_SESSIONS` records); the number emitted. Never raises."""
    if dialect not in DIALECTS:
        warn_once(f"samples:dialect:{dialect}", "otel-dbperf dbmonitor: no query samples for %r", dialect)
        return 0
    rows = fetch(conn, PG_SAMPLE_SQL if dialect == "postgresql" else MYSQL_SAMPLE_SQL, f"{dialect} query samples")
    if rows is None:
        return 0
    try:
        return _records(rows, dialect, logger)
    except Exception as exc:  # noqa: BLE001 - a bug here never stops the monitor (re-raised under pytest)
        internal_error("dbmonitor.samples", exc, "that interval's query samples are skipped")
        return 0
