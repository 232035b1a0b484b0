"""The runs: each dialect's EXPLAIN on a session, and the :class:`Explainer` that gates, runs and
counts them (it never raises).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ... import _forksafe
from ..._guard import internal_error
from ..._sql import _MAX_SCAN, analyze
from .gate import _RateLimiter, refusal
from .plan import _MAX_HINT_COLUMNS, ExplainConfig, Plan, _log, _Skip
from .session import _SAVEPOINT, _is_failed_transaction, _is_timeout, _Session, _session, _timeout_ms
from .verdicts import _SQLITE_TABLE, _full_scans, _mariadb_plan, _pg_plan, _sqlite_plan, _worst_scan

_DIALECTS = {"postgresql": "postgresql", "mysql": "mariadb", "mariadb": "mariadb", "sqlite": "sqlite"}


@contextmanager
def _pg_scope(session: _Session, status: str) -> Iterator[None]:
    """A rolled-back savepoint inside the user's transaction, else a rolled-back transaction of ours."""
    if status == "in_transaction":
        session.run(f"SAVEPOINT {_SAVEPOINT}")
        try:
            yield
        finally:
            session.run(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            session.run(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    elif session.implicit_begin():
        try:
            yield
        finally:
            session.rollback()
    else:
        session.run("BEGIN")
        try:
            yield
        finally:
            session.run("ROLLBACK")


def _run_postgres(
    session: _Session, statement: str, params: Any, config: ExplainConfig
) -> tuple[Any, int | None, frozenset[str]]:
    """(JSON plan document, estimated rows of the table it seq-scans with a filter, if any, and the
    leading columns of that table's indexes)."""
    status = session.pg_status()
    if status == "unknown":
        raise ConnectionError("connection closed or broken")  # counted as a failure
    if status != "idle" and status != "in_transaction":
        raise _Skip("failed_transaction" if status == "failed" else "busy")
    options = "ANALYZE, FORMAT JSON" if config.analyze else "FORMAT JSON"
    with _pg_scope(session, status):
        session.run(f"SET LOCAL statement_timeout = {_timeout_ms(config)}")
        session.run("SET LOCAL transaction_read_only = on")  # ANALYZE or not, nothing may write
        doc = session.run(f"EXPLAIN ({options}) {statement}", params)[0][0]
        doc = json.loads(doc) if isinstance(doc, str) else doc
        scan = _worst_scan(doc, ("Node Type", "Seq Scan"), "Filter", "Relation Name", "Total Cost")
        table_rows = _pg_table_rows(session, scan["Relation Name"]) if scan else None
        indexed = _pg_indexed_columns(session, scan["Relation Name"]) if scan else frozenset()
    return doc, table_rows, indexed


def _regclass_literal(relation: str) -> str:
    name = '"' + relation.replace('"', '""') + '"'
    return "'" + name.replace("'", "''") + "'"


def _pg_indexed_columns(session: _Session, relation: str) -> frozenset[str]:
    """The (lowercased) leading columns of the table's indexes: the columns an index can look up."""
    rows = session.run(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        f"WHERE i.indrelid = to_regclass({_regclass_literal(relation)})"
    )
    return frozenset(str(r[0]).lower() for r in rows)


def _pg_table_rows(session: _Session, relation: str) -> int | None:
    literal = _regclass_literal(relation)
    rows = session.run(f"SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass({literal})")
    count = rows[0][0] if rows else None
    return int(count) if isinstance(count, int) and count >= 0 else None  # -1: never analyzed


def _run_mariadb(
    session: _Session, statement: str, params: Any, config: ExplainConfig
) -> tuple[Any, bool, dict[str, frozenset[str]]]:
    """(JSON plan document, whether ANALYZE was given up because the user is in a transaction, the
    leading index columns of each table it scans in full with a condition)."""
    in_transaction, autocommit = session.run("SELECT @@in_transaction, @@autocommit")[0]
    # Read-only can only be chosen when a transaction starts, so ANALYZE runs only outside one.
    analyze_it = config.analyze and not in_transaction
    settings = f"max_statement_time={_timeout_ms(config) / 1000:.3f}" + (", tx_read_only=1" if analyze_it else "")
    verb = "ANALYZE FORMAT=JSON" if analyze_it else "EXPLAIN FORMAT=JSON"
    sql = f"SET STATEMENT {settings} FOR {verb} {statement}"
    if in_transaction:
        session.run(f"SAVEPOINT {_SAVEPOINT}")
        try:
            doc = json.loads(session.run(sql, params)[0][0])
            indexed = _mariadb_indexed_columns(session, doc)
        finally:
            session.run(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            session.run(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    else:
        # No BEGIN of ours: START TRANSACTION would release the session's LOCK TABLES.
        try:
            doc = json.loads(session.run(sql, params)[0][0])
            indexed = _mariadb_indexed_columns(session, doc)
        finally:
            if not autocommit:
                session.run("ROLLBACK")  # ends the transaction our statements may have opened
    return doc, config.analyze and not analyze_it, indexed


def _mariadb_indexed_columns(session: _Session, doc: Any) -> dict[str, frozenset[str]]:
    """Per table that the plan scans in full with a condition: the (lowercased) leading columns of its indexes."""
    tables = sorted({n["table_name"] for n in _full_scans(doc) if isinstance(n.get("attached_condition"), str)})
    found: dict[str, frozenset[str]] = {}
    for table in tables[:_MAX_HINT_COLUMNS]:
        rows = session.run(
            "SELECT column_name FROM information_schema.statistics "
            "WHERE table_schema = DATABASE() AND table_name = %s AND seq_in_index = 1",
            (table,),
        )
        found[table.lower()] = frozenset(str(r[0]).lower() for r in rows)
    return found


def _sqlite_indexed_columns(session: _Session, statement: str) -> dict[str, frozenset[str]]:
    """Per table the statement names: the (lowercased) leading columns of its indexes."""
    sanitized = analyze(statement, _MAX_SCAN, "sqlite").sanitized
    tables = sorted({m[1] for m in _SQLITE_TABLE.finditer(sanitized)})
    found: dict[str, frozenset[str]] = {}
    for table in tables[:_MAX_HINT_COLUMNS]:
        rows = session.run(
            "SELECT ii.name FROM pragma_index_list(?) il, pragma_index_info(il.name) ii WHERE ii.seqno = 0", (table,)
        )
        found[table.lower()] = frozenset(str(r[0]).lower() for r in rows)
    return found


class Explainer:
    """Runs and reads EXPLAIN for slow SELECTs; see the module docstring for the rules it keeps."""

    def __init__(self, config: ExplainConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or ExplainConfig()
        self._limiter = _RateLimiter(self.config, clock)
        self._counts: Counter[str] = Counter()
        self._lock = _forksafe.lock("explain.counts")

    def explain(
        self, dbapi_connection: Any, dialect_name: str, statement: str, parameters: Any, fingerprint: str
    ) -> Plan | None:
        """The plan of ``statement`` on ``dbapi_connection`` with ``parameters``, or None (counted)."""
        try:
            return self._explain(dbapi_connection, dialect_name, statement, parameters, fingerprint)
        except _Skip as skip:
            self.count("skipped." + skip.reason)
        except Exception as exc:  # noqa: BLE001 - never into the application
            internal_error("explain", exc)
        return None

    def stats(self) -> dict[str, Any]:
        """``{"explained": n, "failed": n, "timed_out": n, "analyze_downgraded": n, "skipped": {reason: n}}``."""
        with self._lock:
            counts = dict(self._counts)
        skipped = {k.partition(".")[2]: v for k, v in counts.items() if k.startswith("skipped.")}
        plain = ("explained", "failed", "timed_out", "analyze_downgraded")
        return {**{k: counts.get(k, 0) for k in plain}, "skipped": skipped}

    def count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _explain(
        self, dbapi_connection: Any, dialect_name: str, statement: str, parameters: Any, fingerprint: str
    ) -> Plan | None:
        reason = refusal(statement, self.config.analyze, dialect_name) if isinstance(statement, str) else "not_select"
        if reason is not None:
            raise _Skip(reason)
        found = _session(dbapi_connection)
        if found is None or found[0] != _DIALECTS.get(dialect_name):
            raise _Skip("unsupported")  # also MySQL proper: no @@in_transaction, other JSON plans
        family, session = found
        if family == "postgresql" and session.pg_status() == "failed":
            raise _Skip("failed_transaction")
        if not self._limiter.allow(fingerprint or analyze(statement, 4096, dialect_name).fingerprint):
            raise _Skip("rate_limited")
        try:
            result = self._run(family, session, statement, parameters)
        except _Skip:
            raise
        except Exception as exc:  # noqa: BLE001 - a database error: counted, never raised
            self._failed(exc)
            return None
        plan = self._read(family, result, statement)
        self.count("explained")
        return plan

    def _run(self, family: str, session: _Session, statement: str, parameters: Any) -> Any:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        with suppress_instrumentation():  # our statements are not the application's queries
            if family == "postgresql":
                return _run_postgres(session, statement, parameters, self.config)
            if family == "mariadb":
                return _run_mariadb(session, statement, parameters, self.config)
            rows = session.run("EXPLAIN QUERY PLAN " + statement, parameters)  # never executes the query
            return rows, _sqlite_indexed_columns(session, statement)

    def _read(self, family: str, result: Any, statement: str) -> Plan:
        if family == "postgresql":
            return _pg_plan(result[0], result[1], self.config, statement, result[2])
        if family == "mariadb":
            if result[1]:
                self.count("analyze_downgraded")
            return _mariadb_plan(result[0], self.config, statement, result[2])
        return _sqlite_plan(result[0], statement, self.config, result[1])

    def _failed(self, exc: BaseException) -> None:
        if _is_failed_transaction(exc):
            self.count("skipped.failed_transaction")
            return
        self.count("failed")
        if _is_timeout(exc):
            self.count("timed_out")
        # The type only: driver messages quote statements and values.
        _log.debug("otel-dbperf: EXPLAIN failed (%s)", type(exc).__name__)
