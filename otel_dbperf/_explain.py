"""EXPLAIN plans for slow SELECTs (``DBPERF_EXPLAIN``), run on the connection that ran them.

Safety comes first, because the EXPLAIN runs inside the user's transaction:

- only one plain SELECT (no writes, no ``INTO``, no locking clause, no second statement), as
  read by the database's own lexical rules (:func:`refusal`); with ANALYZE, no call of a
  function outside :data:`SAFE_FUNCTIONS`;
- never in a failed (aborted) PostgreSQL transaction;
- inside a SAVEPOINT that is rolled back when the user is in a transaction, else in a
  short transaction of ours that is rolled back, so the user's transaction, snapshot,
  autocommit mode and idle state are what they were;
- read-only (PostgreSQL ``transaction_read_only``, MariaDB ``tx_read_only`` for ANALYZE)
  and bounded by a statement timeout;
- rate-limited per fingerprint and overall;
- plans are sanitized like statements: bound parameter values appear in plans as literals.

:class:`Explainer` never raises: database errors are counted as failures, bugs go to
:func:`~otel_dbperf._guard.internal_error`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import _forksafe
from . import attributes as A
from ._guard import internal_error
from ._sdk_compat import contrib_query_span
from ._sql import _MAX_SCAN, analyze, code_tokens

_log = logging.getLogger("otel_dbperf")

EVENT_EXPLAIN = A.EVENT_EXPLAIN
ATTR_PLAN = A.EXPLAIN_PLAN
ATTR_FORMAT = A.EXPLAIN_FORMAT
ATTR_VERDICT = A.EXPLAIN_VERDICT
ATTR_DATABASE = A.EXPLAIN_DATABASE
ATTR_ESTIMATED_ROWS = A.EXPLAIN_ESTIMATED_ROWS
ATTR_INDEX_HINT = A.EXPLAIN_INDEX_HINT
ATTR_DURATION_MS = A.EXPLAIN_DURATION_MS

LARGE_TABLE_ROWS = 10_000  # a full scan (or sort) of fewer estimated rows is not worth a verdict
LARGE_RESULT_ROWS = 10_000  # a result of this many estimated rows sent to the application is worth one
SELECTIVE_SHARE = 0.1  # PostgreSQL: an index is suggested when the filter keeps at most this share of rows
_SAVEPOINT = "dbperf_explain"
_MAX_NODES = 5_000  # plan nodes looked at for a verdict
_MAX_DEPTH = 100  # plan nesting kept in the plan text
_MAX_FINGERPRINTS = 10_000  # per-fingerprint rate-limit entries kept
_MAX_HINT_COLUMNS = 3

# Inside a SELECT these words mean a write (PostgreSQL's data-modifying WITH, SELECT ... INTO, MySQL's
# INTO OUTFILE); a column so named (unquoted) costs a skipped plan, never a wrong one.
_WRITE_WORDS = frozenset({"insert", "update", "delete", "merge", "into", "copy", "call", "do", "execute"})
# "FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE", "FOR KEY SHARE", MySQL's "LOCK IN SHARE MODE"
_LOCK_AFTER_FOR = frozenset({"update", "share", "no", "key"})
# Words followed by "(" that are syntax, not a function call.
_NOT_CALLS = frozenset(
    re.findall(
        r"\w+",
        "in exists as values over filter within any all some array row using on and or not where select from "
        "when then else case lateral by join between is distinct group union intersect except having limit "
        "offset with recursive escape like ilike similar to end interval only table ordinality of returns",
    )
)
#: Functions EXPLAIN ANALYZE may run (it executes the query): built-ins without effects that outlive
#: the rolled-back transaction. A call of anything else (a user function, pg_advisory_lock, nextval,
#: GET_LOCK, dblink, ...) refuses ANALYZE for that statement.
SAFE_FUNCTIONS = frozenset(
    re.findall(
        r"\w+",
        """
        count sum avg min max every bool_and bool_or bit_and bit_or array_agg string_agg group_concat
        json_agg jsonb_agg json_object_agg jsonb_object_agg stddev variance total
        row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
        lower upper length char_length character_length octet_length bit_length substring substr trim
        ltrim rtrim btrim concat concat_ws replace position strpos instr left right lpad rpad split_part
        reverse repeat initcap translate regexp_replace regexp_like format md5 hex unhex ascii chr
        coalesce nullif ifnull isnull nvl greatest least cast convert
        abs round floor ceil ceiling trunc truncate mod power pow sqrt exp ln log log10 sign div pi
        now current_date current_time current_timestamp localtime localtimestamp date_trunc date_part
        extract to_char to_date to_timestamp to_number age date time datetime julianday strftime year
        month day hour minute second date_add date_sub datediff timestampdiff date_format str_to_date
        unnest generate_series array_length cardinality array_position array_to_string string_to_array
        json_extract json_unquote json_build_object jsonb_build_object json_build_array jsonb_build_array
        to_json to_jsonb jsonb_extract_path jsonb_extract_path_text json_extract_path_text jsonb_array_length
        typeof quote printf iif if
        """,
    )
)
_TIMEOUT_SQLSTATE = "57014"  # PostgreSQL query_canceled (statement_timeout)
_MARIADB_TIMEOUT = 1969  # ER_STATEMENT_TIMEOUT


@dataclass(frozen=True)
class ExplainConfig:
    analyze: bool = False  # EXPLAIN ANALYZE executes the query (read-only, rolled back)
    timeout_ms: int = 200  # statement timeout of the EXPLAIN itself
    per_fingerprint_interval_s: float = 60.0  # at most one plan per fingerprint per interval
    max_per_minute: int = 30  # plans per minute, all fingerprints together
    max_plan_chars: int = 16384  # plan text is cut (and marked) beyond this


@dataclass(frozen=True)
class Plan:
    database: str  # "postgresql" | "mysql" | "sqlite"
    format: str  # "json" | "text"
    text: str  # sanitized plan
    verdict: str  # what to do about it, "" when nothing stands out
    estimated_rows: int | None  # rows the flagged scan reads (planner estimate); else the plan's estimate
    index_hint: str  # e.g. "products(name)", or ""


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- which statements may be explained ------------------------------------------------------


def refusal(statement: str, analyze_on: bool = False, dialect: str = "other") -> str | None:
    """Why ``statement`` must not be explained, or None for a single plain SELECT.

    The statement is read by ``dialect``'s lexical rules (every dialect's when unknown), under
    each string rule a session may have chosen (PostgreSQL's ``standard_conforming_strings``
    on and off, MySQL's with and without backslash escapes and ``ANSI_QUOTES``; see
    :func:`~otel_dbperf._sql.code_tokens`): every reading must find exactly one SELECT
    (no ``;`` but a last one, no write, no ``INTO``, no locking clause), and, with ANALYZE, no
    call of a function outside :data:`SAFE_FUNCTIONS`.
    """
    if len(statement) > _MAX_SCAN:
        return "too_long"  # the checks below would only see its beginning
    if "/*!" in statement or "/*M!" in statement:
        return "not_select"  # MySQL executes the text of these comments
    readings = code_tokens(statement, dialect)
    if not readings:
        return "not_select"
    side_effects = False
    for tokens in readings:
        reason = _reading_refusal(tokens, analyze_on)
        if reason == "not_select":
            return reason
        side_effects = side_effects or reason == "side_effects"
    return "side_effects" if side_effects else None


def _reading_refusal(tokens: list[tuple[str, str]], analyze_on: bool) -> str | None:
    code = [(kind, text.lower()) for kind, text in tokens if kind != "C"]
    while code and code[-1] == ("O", ";"):
        code.pop()
    if not code or code[0][1] not in ("select", "with", "("):
        return "not_select"
    if any(kind == "O" and text == ";" for kind, text in code):
        return "not_select"  # a second statement
    if any((kind == "S" or kind == "C") and _has_placeholder(text) for kind, text in tokens):
        return "not_select"
    words = [text for kind, text in code if kind == "W"]
    if "select" not in words or any(w in _WRITE_WORDS for w in words):
        return "not_select"
    for i, word in enumerate(words[:-1]):
        if word == "for" and words[i + 1] in _LOCK_AFTER_FOR or word == "lock" and words[i + 1] == "in":
            return "not_select"
    if analyze_on:
        for i, (kind, text) in enumerate(code[:-1]):
            if code[i + 1] != ("O", "(") or kind not in ("W", "I"):
                continue
            qualified = i > 0 and code[i - 1] == ("O", ".")
            if kind == "I" or qualified or text not in SAFE_FUNCTIONS and text not in _NOT_CALLS:
                return "side_effects"
    return None


def _has_placeholder(text: str) -> bool:
    """Whether ``text`` holds a ``%s`` or ``%(name)s`` (not a ``%%s``), in linear time.

    A client-side binding driver (psycopg2, pymysql) substitutes them even inside a literal or a
    comment, where a value could end the literal early: such a statement is not explained.
    """
    end = len(text)
    i = text.find("%")
    while i >= 0:
        j = i
        while j < end and text[j] == "%":
            j += 1
        if (j - i) % 2 == 1 and j < end and text[j] in "s(":
            return True
        i = text.find("%", j)
    return False


# --- rate limits -------------------------------------------------------------------------------


class _RateLimiter:
    def __init__(self, config: ExplainConfig, clock: Callable[[], float]) -> None:
        self._interval = config.per_fingerprint_interval_s
        self._per_minute = config.max_per_minute
        self._clock = clock
        self._last: dict[str, float] = {}
        self._recent: deque[float] = deque()
        self._lock = _forksafe.lock("explain.rate_limit")

    def allow(self, fingerprint: str) -> bool:
        with self._lock:
            now = self._clock()
            while self._recent and now - self._recent[0] >= 60.0:
                self._recent.popleft()
            last = self._last.get(fingerprint)
            if last is not None and now - last < self._interval or len(self._recent) >= self._per_minute:
                return False
            self._remember(fingerprint, now)
            return True

    def _remember(self, fingerprint: str, now: float) -> None:
        self._last.pop(fingerprint, None)  # re-inserted last: the dict stays in time order
        self._last[fingerprint] = now
        self._recent.append(now)
        if len(self._last) > _MAX_FINGERPRINTS:
            for key in list(self._last)[: _MAX_FINGERPRINTS // 10]:
                del self._last[key]


# --- connections -------------------------------------------------------------------------------


class _Session:
    """The raw DB-API connection, driven without tracing and with its own cursors."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def implicit_begin(self) -> bool:
        """Whether the driver BEGINs on its own before our first statement (PEP 249 non-autocommit)."""
        return not self.conn.autocommit

    def run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        try:
            if params is None:
                cur.execute(sql)
            else:
                cur.execute(sql, params)
            return [tuple(row) for row in cur.fetchall()] if cur.description else []
        finally:
            cur.close()

    def rollback(self) -> None:
        self.conn.rollback()  # through the driver, so that its own transaction bookkeeping agrees

    def pg_status(self) -> str:
        """ "idle", "in_transaction", "failed", "busy" (a query or pipeline in progress) or "unknown"."""
        if getattr(self.conn, "_pipeline", None) is not None:  # psycopg 3 pipeline mode queues statements
            return "busy"
        try:
            code = int(self.conn.info.transaction_status)
        except Exception:  # noqa: BLE001 - psycopg2 raises on a closed connection
            return "unknown"
        # libpq's PQTRANS_*: 0 idle, 1 active, 2 in transaction, 3 in error, 4 unknown (bad connection)
        return {0: "idle", 1: "busy", 2: "in_transaction", 3: "failed"}.get(code, "unknown")


class _AsyncpgSession(_Session):
    """asyncpg under SQLAlchemy's adapter: awaited from SQLAlchemy's greenlet, on the raw connection
    (the adapter's cursors would fill its prepared-statement cache with our statements)."""

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter.driver_connection)

    def implicit_begin(self) -> bool:
        return False

    def run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        from sqlalchemy.util import await_only

        rows = await_only(self.conn.fetch(sql, *(params or ())))
        return [tuple(row) for row in rows]

    def pg_status(self) -> str:
        # asyncpg cannot tell a failed transaction from a live one: in a failed one our SAVEPOINT
        # fails (counted as failed_transaction) and leaves it as it was.
        return "in_transaction" if self.conn.is_in_transaction() else "idle"


def _session(dbapi_connection: Any) -> tuple[str, _Session] | None:
    """(driver family, session) for a supported driver, else None."""
    conn = getattr(dbapi_connection, "__wrapped__", dbapi_connection)  # contrib's sqlite3 proxy
    module = type(conn).__module__.partition(".")[0]
    if module in ("psycopg", "psycopg2") and not type(conn).__name__.startswith("Async"):
        return "postgresql", _Session(conn)
    if module == "pymysql":
        return ("mariadb" if "MariaDB" in str(getattr(conn, "server_version", "")) else "mysql"), _Session(conn)
    if module == "sqlite3":
        return "sqlite", _Session(conn)
    driver = getattr(conn, "driver_connection", None)
    if module == "sqlalchemy" and type(driver).__module__.partition(".")[0] == "asyncpg":
        return "postgresql", _AsyncpgSession(conn)
    return None


_DIALECTS = {"postgresql": "postgresql", "mysql": "mariadb", "mariadb": "mariadb", "sqlite": "sqlite"}


# --- running the EXPLAIN -----------------------------------------------------------------------


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


def _timeout_ms(config: ExplainConfig) -> int:
    return max(1, int(config.timeout_ms))  # 0 would mean no timeout at all in both databases


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


# --- reading plans -----------------------------------------------------------------------------


def _walk(doc: Any) -> Iterator[Any]:
    """Every dict and list in ``doc``, breadth first, at most ``_MAX_NODES``."""
    queue: deque[Any] = deque([doc])
    for _ in range(_MAX_NODES):
        if not queue:
            return
        node = queue.popleft()
        if isinstance(node, (dict, list)):
            yield node
            children = node.values() if isinstance(node, dict) else node
            queue.extend(c for c in children if isinstance(c, (dict, list)))


def _sanitized(value: Any, dialect: str, depth: int = 0) -> Any:
    """A copy of a JSON plan with the literals in its strings replaced by ``?``.

    By the database's own rules: PostgreSQL prints ``'C:\\tmp\\'`` (a backslash is no escape in
    a standard string), MariaDB escapes with backslashes.
    """
    if isinstance(value, str):
        return analyze(value, _MAX_SCAN, dialect).sanitized
    if isinstance(value, (dict, list)) and depth >= _MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {str(k): _sanitized(v, dialect, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_sanitized(v, dialect, depth + 1) for v in value]
    return value


def _worst_scan(doc: Any, match: tuple[str, str], filter_key: str, table_key: str, cost_key: str) -> Any:
    """The costliest plan node with ``match`` (key, value), a filter and a table, or None.

    PostgreSQL: Seq Scan nodes with a Filter, by Total Cost; MariaDB: access_type ALL
    with an attached_condition, by rows read.
    """
    key, value = match
    scans = [
        node
        for node in _walk(doc)
        if isinstance(node, dict)
        and node.get(key) == value
        and isinstance(node.get(filter_key), str)
        and isinstance(node.get(table_key), str)
    ]
    return max(scans, key=lambda n: _number(n.get(cost_key)), default=None)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


_CAST = re.compile(r"::\s*(?:\"[^\"]*\"|\w+)(?:\s+(?:varying|precision|with(?:out)?\s+time\s+zone))?(?:\[\])*")
_IDENT = r"(?:`[^`]{1,128}`|\"[^\"]{1,128}\"|[^\W\d][\w$]{0,127})"
# Whole names only (the lookaheads stop backtracking into "AN" of "AND ("); not calls, not qualifiers.
_COLUMN_REF = re.compile(rf"(?<![\w$`\"]){_IDENT}(?:\s*\.\s*{_IDENT})*(?![\w$])(?!\s*[.(])")
_NOT_COLUMNS = frozenset(
    re.findall(
        r"\w+",
        "and or not is null true false any all some array like ilike in between case when then else end subplan "
        "hashed exists escape collate similar to at time zone distinct from where select current_date current_time "
        "current_timestamp interval unknown binary",
    )
)


def _unquoted(name: str) -> str:
    return name[1:-1] if name[:1] in '`"' and len(name) >= 2 else name


def _statement_names(statement: str | None, dialect: str) -> set[str] | None:
    """The names (words and quoted names, lowercased) the statement itself has outside literals."""
    if statement is None:
        return None
    readings = code_tokens(statement, dialect)
    if not readings:
        return set()
    names = {_unquoted(text).lower() for kind, text in readings[0] if kind in ("W", "I")}
    for tokens in readings[1:]:  # a name must be one in every reading
        names &= {_unquoted(text).lower() for kind, text in tokens if kind in ("W", "I")}
    return names


def _filter_columns(condition: str, owners: set[str], allowed: set[str] | None = None) -> list[str]:
    """Columns of the scanned table (named in ``owners`` when qualified) in a sanitized condition.

    ``allowed``: the names of the statement the plan is for; a hint names nothing else (a plan's
    filter holds the bound values, which no sanitizer may let through as a "column").
    """
    columns: list[str] = []
    for ref in _COLUMN_REF.finditer(_CAST.sub("", condition[:4096])):
        parts = [p.strip() for p in ref.group().split(".")]  # a quoted name with a dot is rare: then skipped
        name = _unquoted(parts[-1])
        if len(parts) > 1 and _unquoted(parts[-2]).lower() not in owners:
            continue
        if parts[-1][:1] not in '`"' and name.lower() in _NOT_COLUMNS or name in columns:
            continue
        if allowed is not None and name.lower() not in allowed:
            continue
        columns.append(name)
    return columns[:_MAX_HINT_COLUMNS]


_LEADING_WILDCARD = re.compile(r"(?:~~\*?|\blike)\s+(?:\(\s*)?'%", re.I)


def _scan_verdict(
    kind: str, table: str, rows: int | None, columns: list[str], leading_wildcard: bool
) -> tuple[str, str]:
    """(verdict, index hint) for a full scan of ``table`` that filters on ``columns``."""
    hint = f"{table}({', '.join(columns)})" if columns else ""
    est = f" (est. {rows} rows)" if rows is not None else ""
    on = f" filtering on {', '.join(columns)}" if columns else " with a filter"
    if leading_wildcard:
        advice = "a LIKE with a leading wildcard cannot use a plain index; a trigram or full-text index may help"
    else:
        advice = f"an index on {hint} may help" if hint else "an index on the filtered columns may help"
    return f"{kind} {table}{est}{on}: {advice}", hint


def _function_verdict(kind: str, table: str, rows: int | None, function: str, column: str) -> tuple[str, str]:
    """(verdict, index hint) for a full scan whose filter wraps the indexed ``column`` in a function."""
    est = f" (est. {rows} rows)" if rows is not None else ""
    applied = f"applies {function}() to {column}" if function else f"applies a function to {column}"
    expression = f"{table}({function}({column}))" if function else ""
    advice = f"compare the raw column {column}" + (
        f", or index the expression: {expression}" if expression else ", or index the expression it computes"
    )
    return f"{kind} {table}{est}: the filter {applied}, so the index on {column} cannot be used: {advice}", expression


_CALL_ON_COLUMN = re.compile(rf"(?<![\w$`\".])({_IDENT})\s*\(\s*(?:\(\s*)*({_IDENT}(?:\s*\.\s*{_IDENT})*)\s*\)")
_AGGREGATING = frozenset({"count", "sum", "avg", "min", "max", "group", "distinct", "group_concat", "total"})


def _function_on_indexed_column(
    condition: str, owners: set[str], indexed: frozenset[str], allowed: set[str] | None
) -> tuple[str, str] | None:
    """(function, column) of the first call in a sanitized condition that wraps an indexed column of the table.

    The column must be a name of the statement; the function is named only when it is one too
    (MariaDB prints ``lcase`` for ``lower``: then it is "a function"). Never a value: both are names.
    """
    if allowed is None or not indexed:
        return None
    for call in _CALL_ON_COLUMN.finditer(_CAST.sub("", condition[:4096])):
        function = _unquoted(call[1]).lower()
        if function in _NOT_CALLS or function in _NOT_COLUMNS:
            continue
        parts = [p.strip() for p in call[2].split(".")]
        column = _unquoted(parts[-1])
        if len(parts) > 1 and _unquoted(parts[-2]).lower() not in owners:
            continue
        if column.lower() in indexed and column.lower() in allowed:
            return (function if function in allowed else ""), column
    return None


def _unfiltered_verdict(kind: str, table: str, rows: int | None) -> str:
    est = f" (est. {rows} rows)" if rows is not None else ""
    return (
        f"{kind} {table}{est} with no filter: the query reads and returns the whole table; "
        "add a WHERE, a LIMIT, or paginate"
    )


def _sort_verdict(kind: str, rows: int | None, table: str, columns: list[str]) -> tuple[str, str]:
    est = f" of est. {rows} rows" if rows is not None else ""
    hint = f"{table}({', '.join(columns)})" if table and columns else ""
    by = f" by {', '.join(columns)}" if columns else ""
    advice = f"an index on {hint} may serve the ORDER BY" if hint else "an index matching the ORDER BY may avoid it"
    return f"{kind}{est}{by}: {advice}", hint


def _large_result_verdict(rows: int) -> str:
    return (
        f"returns est. {rows} rows to the application: fetch only the rows it uses "
        "(a LIMIT, keyset pagination) or aggregate in SQL"
    )


def _pg_plan(
    doc: Any,
    table_rows: int | None,
    config: ExplainConfig,
    statement: str | None = None,
    indexed: frozenset[str] = frozenset(),
) -> Plan:
    """The plan and the first verdict that applies: a function applied to an indexed column, a missing
    index, an unfiltered full scan, a sort of a large input, a large result."""
    allowed = _statement_names(statement, "postgresql")
    scan = _worst_scan(doc, ("Node Type", "Seq Scan"), "Filter", "Relation Name", "Total Cost")
    verdict, hint, rows = "", "", None
    if scan is not None and _pg_index_could_help(scan, table_rows):
        table, raw = scan["Relation Name"], scan["Filter"]
        owners = {table.lower(), str(scan.get("Alias", table)).lower()}
        sanitized = analyze(raw, _MAX_SCAN, "postgresql").sanitized
        call = _function_on_indexed_column(sanitized, owners, indexed, allowed)
        if call is not None:
            verdict, hint = _function_verdict("Seq Scan on", table, table_rows, *call)
        else:
            columns = _filter_columns(sanitized, owners, allowed)
            wildcard = bool(_LEADING_WILDCARD.search(raw))
            verdict, hint = _scan_verdict("Seq Scan on", table, table_rows, columns, wildcard)
        rows = table_rows
    if not verdict:
        root = doc[0].get("Plan") if isinstance(doc, list) and doc and isinstance(doc[0], dict) else None
        top = root.get("Plan Rows") if isinstance(root, dict) else None
        rows = int(top) if isinstance(top, (int, float)) and not isinstance(top, bool) else None
        if isinstance(root, dict):
            verdict, hint, rows = _pg_other_verdict(doc, root, rows, allowed)
    return Plan("postgresql", "json", _json_text(doc, config, "postgresql"), verdict, rows, hint)


def _pg_other_verdict(
    doc: Any, root: dict[str, Any], result_rows: int | None, allowed: set[str] | None
) -> tuple[str, str, int | None]:
    """(verdict, hint, rows) when no filter wants an index: an unfiltered full scan returned whole, a large
    sort, a large result; or ("", "", rows returned)."""
    big_result = result_rows is not None and result_rows >= LARGE_RESULT_ROWS
    nodes = [n for n in _walk(doc) if isinstance(n, dict)]
    if big_result and root.get("Node Type") != "Limit":
        for node in nodes:
            table, rows = node.get("Relation Name"), _number(node.get("Plan Rows"))
            unfiltered = node.get("Node Type") == "Seq Scan" and "Filter" not in node and isinstance(table, str)
            if unfiltered and rows >= LARGE_TABLE_ROWS:
                return _unfiltered_verdict("Seq Scan on", str(table), int(rows)), "", int(rows)
    for node in nodes:
        rows = _number(node.get("Plan Rows"))
        if node.get("Node Type") != "Sort" or rows < LARGE_TABLE_ROWS:
            continue
        keys = node.get("Sort Key")
        keys = [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []
        children = node.get("Plans")
        child = children[0] if isinstance(children, list) and children and isinstance(children[0], dict) else {}
        table, columns = child.get("Relation Name"), []
        if isinstance(table, str) and child.get("Node Type") == "Seq Scan":
            owners = {table.lower(), str(child.get("Alias", table)).lower()}
            sanitized = analyze(", ".join(keys), _MAX_SCAN, "postgresql").sanitized
            columns = _filter_columns(sanitized, owners, allowed)
        verdict, hint = _sort_verdict("Sort", int(rows), table if isinstance(table, str) else "", columns)
        return verdict, hint, int(rows)
    if big_result and result_rows is not None:
        return _large_result_verdict(result_rows), "", result_rows
    return "", "", result_rows


def _pg_index_could_help(scan: dict[str, Any], table_rows: int | None) -> bool:
    """A large table of which the filter keeps few rows (an index will not beat a scan that keeps most)."""
    if table_rows is None:
        return True  # never analyzed: the query was slow, the scan is the suspect
    return table_rows >= LARGE_TABLE_ROWS and _number(scan.get("Plan Rows")) <= table_rows * SELECTIVE_SHARE


_MARIADB_FULL = ("ALL", "index")  # access types that read every row (of the table, of an index)


def _full_scans(doc: Any) -> list[dict[str, Any]]:
    """MariaDB table nodes that read every row."""
    return [
        n
        for n in _walk(doc)
        if isinstance(n, dict) and n.get("access_type") in _MARIADB_FULL and isinstance(n.get("table_name"), str)
    ]


def _mariadb_plan(
    doc: Any,
    config: ExplainConfig,
    statement: str | None = None,
    indexed: dict[str, frozenset[str]] | None = None,
) -> Plan:
    """The plan and the first verdict that applies (as :func:`_pg_plan`; MariaDB's estimates are rows read)."""
    allowed = _statement_names(statement, "mysql")
    verdict, hint, rows = "", "", None
    for node in _full_scans(doc):  # a function applied to an indexed column (the index is then read in full)
        table, condition, read = node["table_name"], node.get("attached_condition"), _number(node.get("rows"))
        if isinstance(condition, str) and read >= LARGE_TABLE_ROWS:
            sanitized = analyze(condition, _MAX_SCAN, "mysql").sanitized
            keys = (indexed or {}).get(table.lower(), frozenset())
            call = _function_on_indexed_column(sanitized, {table.lower()}, keys, allowed)
            if call is not None:
                kind = f"Full scan (access_type {node['access_type']}) of"
                verdict, hint = _function_verdict(kind, table, int(read), *call)
                rows = int(read)
                break
    scan = _worst_scan(doc, ("access_type", "ALL"), "attached_condition", "table_name", "rows")
    if scan is not None and not verdict:
        rows = int(_number(scan["rows"])) if "rows" in scan else None
        if rows is None or rows >= LARGE_TABLE_ROWS:
            table, raw = scan["table_name"], scan["attached_condition"]
            sanitized = analyze(raw, _MAX_SCAN, "mysql").sanitized
            columns = _filter_columns(sanitized, {table.lower()}, allowed)
            wildcard = bool(_LEADING_WILDCARD.search(raw))
            verdict, hint = _scan_verdict("Full scan (access_type ALL) of", table, rows, columns, wildcard)
    if not verdict:
        verdict, hint, other_rows = _mariadb_other_verdict(doc, allowed)
        rows = other_rows if verdict else rows
    return Plan("mysql", "json", _json_text(doc, config, "mysql"), verdict, rows, hint)


def _mariadb_other_verdict(doc: Any, allowed: set[str] | None) -> tuple[str, str, int | None]:
    """(verdict, hint, rows): an unfiltered full scan, a large filesort, a large single-table result."""
    bounded = allowed is None or "limit" in allowed or bool(allowed & _AGGREGATING)
    tables = [n for n in _walk(doc) if isinstance(n, dict) and isinstance(n.get("table_name"), str)]
    if not bounded:
        for node in _full_scans(doc):
            read = _number(node.get("rows"))
            if "attached_condition" not in node and read >= LARGE_TABLE_ROWS:
                kind = f"Full scan (access_type {node['access_type']}) of"
                return _unfiltered_verdict(kind, node["table_name"], int(read)), "", int(read)
    for node in _walk(doc):
        sort = node.get("filesort") if isinstance(node, dict) else None
        if not isinstance(sort, dict):
            continue
        sorted_tables = [n for n in _walk(sort) if isinstance(n, dict) and isinstance(n.get("table_name"), str)]
        read = max((_number(n.get("rows")) for n in sorted_tables), default=0.0)
        if read < LARGE_TABLE_ROWS:
            continue
        table = sorted_tables[0]["table_name"] if len(sorted_tables) == 1 else ""
        key = sort.get("sort_key")
        columns: list[str] = []
        if table and isinstance(key, str):
            columns = _filter_columns(analyze(key, _MAX_SCAN, "mysql").sanitized, {table.lower()}, allowed)
        verdict, hint = _sort_verdict("Filesort", int(read), table, columns)
        return verdict, hint, int(read)
    if not bounded and len(tables) == 1:
        node = tables[0]
        share = _number(node.get("filtered")) if "filtered" in node else 100.0
        returned = int(_number(node.get("rows")) * min(share, 100.0) / 100.0)
        if returned >= LARGE_RESULT_ROWS:
            return _large_result_verdict(returned), "", returned
    return "", "", None


_SQLITE_FULL_SCAN = re.compile(r"SCAN (?:TABLE )?([^\W\d][\w$]*)(?: AS ([^\W\d][\w$]*))?\Z")
# any scan of every row: of the table, or of an index that covers the query
_SQLITE_ANY_SCAN = re.compile(
    r"SCAN (?:TABLE )?([^\W\d][\w$]*)(?: AS ([^\W\d][\w$]*))?(?: USING (?:COVERING )?INDEX [^\W\d][\w$]*)?\Z"
)
_SQLITE_TEMP_SORT = "USE TEMP B-TREE FOR ORDER BY"
_SQLITE_WHERE = re.compile(r"\bwhere\b(.*?)(?:\b(?:group|order|limit|having|window|union|except|intersect)\b|\Z)", re.I)
_SQLITE_ORDER = re.compile(r"\border\s+by\b(.*?)(?:\b(?:limit|union|except|intersect)\b|\Z)", re.I)
_SQLITE_TABLE = re.compile(
    r"\b(?:from|join)\s+([^\W\d][\w$]*)(?:\s+(?:as\s+)?(?!(?:where|join|on|left|inner|cross|natural|group|order|limit)\b)([^\W\d][\w$]*))?",
    re.I,
)


def _sqlite_plan(
    rows: list[tuple[Any, ...]],
    statement: str,
    config: ExplainConfig,
    indexed: dict[str, frozenset[str]] | None = None,
) -> Plan:
    """Plan from ``EXPLAIN QUERY PLAN`` rows (id, parent, notused, detail), drawn as an indented tree.

    SQLite plans carry no row estimates: the verdicts are a function applied to an indexed column,
    a missing index, an unfiltered full scan and a sort in a temporary B-tree (no large-result verdict).
    """
    sanitized = analyze(statement, _MAX_SCAN, "sqlite").sanitized
    where = _SQLITE_WHERE.search(sanitized)
    allowed = _statement_names(statement, "sqlite")
    depth: dict[Any, int] = {}
    lines, verdict, hint = [], "", ""
    scans: list[str] = []
    temp_sort = False
    for row in rows[:_MAX_NODES]:
        node, parent, detail = row[0], row[1], analyze(str(row[-1]), _MAX_SCAN, "sqlite").sanitized
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * min(depth[node], 32) + detail)
        temp_sort = temp_sort or detail == _SQLITE_TEMP_SORT
        scan = _SQLITE_ANY_SCAN.fullmatch(detail)
        if scan is None:
            continue
        scanned = scan[2] or scan[1]
        scans.append(scanned)
        if where and not verdict:
            table = _sqlite_table(scanned, sanitized)
            columns = (indexed or {}).get(table.lower(), frozenset())
            call = _function_on_indexed_column(where[1], {scanned.lower(), table.lower()}, columns, allowed)
            if call is not None:
                verdict, hint = _function_verdict("Full scan (SCAN) of", table, None, *call)
            elif _SQLITE_FULL_SCAN.fullmatch(detail):
                verdict, hint = _sqlite_verdict(scanned, sanitized, where[1], statement)
    if not verdict and scans:
        verdict, hint = _sqlite_other_verdict(scans, sanitized, where is not None, temp_sort, allowed)
    return Plan("sqlite", "text", _bounded("\n".join(lines), config), verdict, None, hint)


def _sqlite_other_verdict(
    scans: list[str], sanitized: str, filtered: bool, temp_sort: bool, allowed: set[str] | None
) -> tuple[str, str]:
    bounded = allowed is None or "limit" in allowed or bool(allowed & _AGGREGATING)
    if not filtered and not bounded and len(scans) == 1:
        return _unfiltered_verdict("Full scan (SCAN) of", _sqlite_table(scans[0], sanitized), None), ""
    order = _SQLITE_ORDER.search(sanitized)
    if temp_sort and order is not None:
        table = _sqlite_table(scans[0], sanitized) if len(scans) == 1 else ""
        owners = {scans[0].lower(), table.lower()} if table else set()
        columns = _filter_columns(order[1], owners, allowed) if table else []
        return _sort_verdict("Sort in a temporary B-tree", None, table, columns)
    return "", ""


def _sqlite_table(scanned: str, sanitized: str) -> str:
    """SQLite names a scan by alias: the table behind it."""
    for m in _SQLITE_TABLE.finditer(sanitized):
        if scanned.lower() in (m[1].lower(), (m[2] or "").lower()):
            return str(m[1])
    return scanned


def _sqlite_verdict(scanned: str, sanitized: str, where: str, statement: str) -> tuple[str, str]:
    """SQLite names the scan by alias: find its table, then the table's columns in the WHERE clause."""
    table = _sqlite_table(scanned, sanitized)
    columns = _filter_columns(where, {scanned.lower(), table.lower()}, _statement_names(statement, "sqlite"))
    if not columns:
        return "", ""  # the filter is on another table: this scan is the join's outer loop
    return _scan_verdict("Full scan (SCAN) of", table, None, columns, False)


def _json_text(doc: Any, config: ExplainConfig, dialect: str) -> str:
    return _bounded(json.dumps(_sanitized(doc, dialect), separators=(",", ":"), ensure_ascii=False), config)


def _bounded(text: str, config: ExplainConfig) -> str:
    limit = max(config.max_plan_chars, 1)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_timeout(exc: BaseException) -> bool:
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return code == _TIMEOUT_SQLSTATE or bool(exc.args) and exc.args[0] == _MARIADB_TIMEOUT


def _is_failed_transaction(exc: BaseException) -> bool:
    return (getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)) == "25P02"


# --- the explainer -----------------------------------------------------------------------------


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


def plan_attributes(plan: Plan) -> dict[str, Any]:
    """The attributes of the ``dbperf.explain`` span event."""
    attrs: dict[str, Any] = {
        ATTR_PLAN: plan.text,
        ATTR_FORMAT: plan.format,
        ATTR_VERDICT: plan.verdict,
        ATTR_DATABASE: plan.database,
    }
    if plan.estimated_rows is not None:
        attrs[ATTR_ESTIMATED_ROWS] = plan.estimated_rows
    if plan.index_hint:
        attrs[ATTR_INDEX_HINT] = plan.index_hint
    return attrs


# --- SQLAlchemy --------------------------------------------------------------------------------

OnPlan = Callable[[Any, Plan], None]
_installed: Callable[..., None] | None = None
_install_lock = _forksafe.lock("explain.install")


def install(explainer: Explainer, slow_threshold_ns: int, on_plan: OnPlan | None = None, records: Any = None) -> None:
    """Explain slow SELECTs of every SQLAlchemy engine; ``on_plan(span, plan)`` sees each plan.
    ``records``: the ``DbPerfSpanProcessor`` whose open queries keep the plans (None, or a span it
    does not have: the plan goes on the span as an event).

    ``slow_threshold_ns``: the pipeline's ``Thresholds.slow_ns``. The decision is made before
    the span ends (the plan needs the query's connection), on the time since the span began.

    The listener is class-level on ``Engine``: SQLAlchemy runs class-level listeners before
    the instance-level ones of contrib's instrumentation, so the query's span is still open.
    Installing again replaces the previous listener.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def after_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        try:
            _explain_slow_query(
                explainer, slow_threshold_ns, on_plan, records, conn, statement, parameters, context, executemany
            )
        except Exception as exc:  # noqa: BLE001 - never into the application
            internal_error("explain.after_cursor_execute", exc)

    global _installed
    with _install_lock:
        _uninstall_locked()
        event.listen(Engine, "after_cursor_execute", after_cursor_execute)
        _installed = after_cursor_execute


def uninstall() -> None:
    with _install_lock:
        _uninstall_locked()


def _uninstall_locked() -> None:
    global _installed
    if _installed is not None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "after_cursor_execute", _installed)
        _installed = None


def _explain_slow_query(
    explainer: Explainer,
    threshold_ns: int,
    on_plan: OnPlan | None,
    records: Any,
    conn: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    span = contrib_query_span(context)  # not yet ended
    if span is None or executemany or not span.is_recording():
        return
    start = getattr(span, "start_time", None)
    ended_ns = time.time_ns()  # the SDK's clock for span times
    if not isinstance(start, int) or ended_ns - start < threshold_ns:
        return
    if getattr(context, "_is_server_side", False):
        explainer.count("skipped.server_side_cursor")  # its rows are still on the server
        return
    fingerprint = analyze(statement, 4096, conn.dialect.name).fingerprint
    plan = explainer.explain(conn.connection.dbapi_connection, conn.dialect.name, statement, parameters, fingerprint)
    if plan is None:
        return
    # The span ends after the EXPLAIN: the event's time is when the query itself finished.
    attrs = {**plan_attributes(plan), ATTR_DURATION_MS: (time.time_ns() - ended_ns) / 1e6}
    query = records.open_query(span) if records is not None else None
    if query is not None:  # the exporter adds the event; the slow-query log and the profiler read it here
        query.plan = (attrs, ended_ns)
    else:
        span.add_event(EVENT_EXPLAIN, attrs, timestamp=ended_ns)
    if on_plan is not None:
        on_plan(span, plan)
