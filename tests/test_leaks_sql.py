"""Statements read under every string rule their session may have, through real drivers and servers.

PostgreSQL with ``standard_conforming_strings = off`` (psycopg2 and psycopg 3 sessions) takes a
backslash in a ``'...'`` string as an escape: ``'O\\'Brien'`` is one string there, two pieces and a
word under the standard rule. MariaDB's ``NO_BACKSLASH_ESCAPES`` is the same question the other way,
and ``ANSI_QUOTES`` (with backslash escapes on) makes ``"\\"`` a whole quoted name. The sanitizer
must hide what any of these readings calls a literal, and EXPLAIN must run only what every
reading calls one SELECT: each test below checks on the real server that the form means what it
says (the value comes back, the smuggled statement really takes its lock when run directly),
then that nothing leaks and that EXPLAIN leaves no lock behind.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg2
import pytest
from conftest import MARIA_URL, maria_connect
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
from opentelemetry.sdk.trace import ReadableSpan
from sqlalchemy import create_engine, event, text
from support.pipeline import Pipeline, instrument_sqlalchemy, uninstrument_sqlalchemy

from otel_dbperf import Settings
from otel_dbperf import attributes as A
from otel_dbperf._sql import analyze
from otel_dbperf._sqla.explain import ExplainConfig, Explainer, refusal

LOCK_KEY = 731_004  # the advisory lock a smuggled statement takes (PostgreSQL)
MARIA_LOCK = "dbperf_leak_sql_smuggled"  # the named lock one takes (MariaDB)
ANY_PLAN = ExplainConfig(per_fingerprint_interval_s=0, max_per_minute=10_000)
ANALYZE = ExplainConfig(analyze=True, per_fingerprint_interval_s=0, max_per_minute=10_000)

# --- PostgreSQL, standard_conforming_strings = off ------------------------------------------------
# Each form is valid with standard_conforming_strings off and returns {s} as a value there; read by
# the standard rule, {s} is a word between two strings.
PG_NONSTANDARD_FORMS = {
    "escaped_quote": r"SELECT 'O\'Brien' AS name, '{s}' AS pw",
    "national_escaped_quote": r"SELECT N'O\'Brien' AS name, '{s}' AS pw",
    "escaped_quote_then_doubled": r"SELECT 'a\'' || '{s}' AS v",
    "escaped_backslash_and_quote": r"SELECT 'C:\\tmp\\\'' AS a, '{s}' AS b",
    "escape_string_beside": r"SELECT E'it\'s' AS a, 'x\'y' AS b, '{s}' AS c",
}
# Valid under both rules: a quoted alias under the standard one, inside a string without it.
PG_EITHER_RULE = r"SELECT 'a\' AS {s}, ' AS v -- '"
# Under standard_conforming_strings = off: one SELECT, then a second statement that takes a lock;
# read by the standard rule the second statement is inside a string.
PG_SMUGGLED = {
    "second_statement": r"SELECT '\''; SELECT pg_advisory_lock({key}); --'",
    "second_statement_after_escape_string": r"SELECT E'\\', 'it\'s'; SELECT pg_advisory_lock({key}); --'",
}
# The same lock taken by a function call (EXPLAIN ANALYZE executes the statement)
PG_SMUGGLED_CALL = r"SELECT '\'', pg_advisory_lock({key}) --'"


def _secret() -> str:
    return f"dbperf_secret_{secrets.token_hex(6)}"


class Traced(Pipeline):
    """The pipeline: what a user's exporter would get."""

    def __init__(self) -> None:
        super().__init__(Settings())

    def statements(self) -> list[str]:
        out = []
        for span in self.memory.get_finished_spans():
            attrs = span.attributes or {}
            statement = attrs.get(A.DB_QUERY_TEXT, attrs.get(A.DB_STATEMENT))
            if statement is not None:
                out.append(str(statement))
        return out

    def exported(self) -> list[ReadableSpan]:
        return list(self.memory.get_finished_spans())


def _pg_connect(driver: str, dsn: str) -> Any:
    if driver == "psycopg":
        return psycopg.connect(dsn, autocommit=True)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def _run(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []
    finally:
        cur.close()


@pytest.fixture(params=["psycopg2", "psycopg"])
def pg_traced(request: pytest.FixtureRequest, pg_dsn: str) -> Iterator[tuple[Traced, Any]]:
    """A traced psycopg2 / psycopg 3 session with standard_conforming_strings off."""
    traced = Traced()
    instrumentor: Any = Psycopg2Instrumentor() if request.param == "psycopg2" else PsycopgInstrumentor()
    instrumentor.instrument(tracer_provider=traced.provider, skip_dep_check=True)
    conn = None
    try:
        conn = _pg_connect(request.param, pg_dsn)
        _run(conn, "SET standard_conforming_strings = off")
        assert _run(conn, "SHOW standard_conforming_strings") == [("off",)]
        yield traced, conn
    finally:
        if conn is not None:
            conn.close()
        instrumentor.uninstrument()
        traced.provider.shutdown()


@pytest.mark.parametrize("form", sorted(PG_NONSTANDARD_FORMS))
def test_pg_literal_after_an_escaped_quote_is_not_exported(pg_traced: tuple[Traced, Any], form: str) -> None:
    traced, conn = pg_traced
    secret = _secret()
    rows = _run(conn, PG_NONSTANDARD_FORMS[form].format(s=secret))
    assert secret in repr(rows)  # the server took it as a string value: it ran under the off rule
    statements = [s for s in traced.statements() if "SELECT" in s and "standard_conforming" not in s]
    assert len(statements) == 1, traced.statements()
    assert secret not in statements[0], statements[0]
    assert not any(secret in span.to_json() for span in traced.exported())


def test_pg_form_valid_under_both_rules_hides_what_either_calls_a_literal(pg_traced: tuple[Traced, Any]) -> None:
    traced, conn = pg_traced
    secret = _secret()
    assert secret in repr(_run(conn, PG_EITHER_RULE.format(s=secret)))  # a value with the off rule
    assert not any(secret in span.to_json() for span in traced.exported())


def _pg_locks(other: Any, pid: int) -> int:
    rows = _run(
        other,
        f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {LOCK_KEY} AND pid = {pid}",
    )
    return int(rows[0][0])


@pytest.fixture(params=["psycopg2", "psycopg"])
def pg_off(request: pytest.FixtureRequest, pg_dsn: str) -> Iterator[tuple[Any, Any, int]]:
    """(an untraced session with standard_conforming_strings off, another session, the first one's pid)."""
    conn = _pg_connect(request.param, pg_dsn)
    other = _pg_connect("psycopg", pg_dsn)
    try:
        _run(conn, "SET standard_conforming_strings = off")
        pid = int(_run(conn, "SELECT pg_backend_pid()")[0][0])
        yield conn, other, pid
    finally:
        _run(other, f"SELECT pg_terminate_backend({pid})")  # its session locks go with it
        conn.close()
        other.close()


def _smuggles_for_real(conn: Any, other: Any, pid: int, sql: str) -> None:
    """Run directly, ``sql`` takes the lock on this session: the form really smuggles."""
    _run(conn, sql)
    assert _pg_locks(other, pid) == 1
    _run(conn, "SELECT pg_advisory_unlock_all()")
    assert _pg_locks(other, pid) == 0


@pytest.mark.parametrize("form", sorted(PG_SMUGGLED))
def test_pg_explain_runs_no_statement_smuggled_after_an_escaped_quote(pg_off: tuple[Any, Any, int], form: str) -> None:
    conn, other, pid = pg_off
    sql = PG_SMUGGLED[form].format(key=LOCK_KEY)
    _smuggles_for_real(conn, other, pid, sql)
    explainer = Explainer(ANY_PLAN)
    assert explainer.explain(conn, "postgresql", sql, None, "fp") is None
    assert _pg_locks(other, pid) == 0, "EXPLAIN ran the smuggled statement"
    assert explainer.stats()["skipped"] == {"not_select": 1}


def test_pg_explain_analyze_runs_no_call_hidden_behind_an_escaped_quote(pg_off: tuple[Any, Any, int]) -> None:
    conn, other, pid = pg_off
    sql = PG_SMUGGLED_CALL.format(key=LOCK_KEY)
    _smuggles_for_real(conn, other, pid, sql)
    explainer = Explainer(ANALYZE)
    assert explainer.explain(conn, "postgresql", sql, None, "fp") is None
    assert _pg_locks(other, pid) == 0, "EXPLAIN ANALYZE ran the hidden call"
    assert explainer.stats()["skipped"] == {"side_effects": 1}


def test_pg_plain_statements_with_backslashes_are_still_explained(pg_off: tuple[Any, Any, int]) -> None:
    """The second reading refuses only what it reads as more than one SELECT."""
    conn, _, _ = pg_off
    explainer = Explainer(ANY_PLAN)
    for sql in (r"SELECT 'O\'Brien' AS name", r"SELECT E'a\\b' AS v, 'C:\\tmp' AS w", "SELECT $$a\\$$ AS v"):
        assert explainer.explain(conn, "postgresql", sql, None, "fp") is not None, sql
    assert explainer.stats()["explained"] == 3


# --- MariaDB: NO_BACKSLASH_ESCAPES and ANSI_QUOTES ----------------------------------------------

MARIA_MODES = {
    "no_backslash_escapes": "NO_BACKSLASH_ESCAPES",
    "ansi_quotes": "ANSI_QUOTES",
    "ansi_quotes_no_backslash_escapes": "ANSI_QUOTES,NO_BACKSLASH_ESCAPES",
}
# mode -> a form valid in that mode that returns {s} as a value
MARIA_FORMS = {
    "no_backslash_escapes": r"SELECT 'C:\tmp\' AS a, '{s}' AS b",
    "ansi_quotes": r"""SELECT '\'' AS "\", '{s}' AS "'" """,
    "ansi_quotes_no_backslash_escapes": r"""SELECT 'a\' AS "\", '{s}' AS "'" """,
}
# mode -> a SELECT that calls GET_LOCK in that mode, inside literals under the other readings
MARIA_SMUGGLED_CALL = {
    "no_backslash_escapes": r"SELECT 'a\', GET_LOCK('{lock}', 0), ' AS b' AS c",
    "ansi_quotes": r"""SELECT '\'' AS "\", GET_LOCK('{lock}', 0) AS "'" """,
}
# mode -> a SELECT, then a second statement that takes the lock (with CLIENT.MULTI_STATEMENTS)
MARIA_SMUGGLED = {
    "no_backslash_escapes": r"SELECT 'a\'; SELECT GET_LOCK('{lock}', 0); -- '",
    "ansi_quotes": r"""SELECT '\'' AS "\"; SELECT GET_LOCK('{lock}', 0) AS "'" """,
}


def _maria(mode: str, multi_statements: bool = False) -> Any:
    from pymysql.constants import CLIENT

    conn = maria_connect(autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS if multi_statements else 0)
    _run(conn, f"SET SESSION sql_mode = CONCAT(@@sql_mode, ',{MARIA_MODES[mode]}')")
    return conn


def _maria_lock_holder(other: Any) -> Any:
    return _run(other, f"SELECT IS_USED_LOCK('{MARIA_LOCK}')")[0][0]


@pytest.mark.parametrize("mode", sorted(MARIA_FORMS))
def test_mariadb_literals_hidden_under_every_sql_mode(mode: str) -> None:
    _maria(mode).close()  # skips (or fails, DBPERF_REQUIRE_SERVICES=1) with the reason when MariaDB is not there
    secret = _secret()
    sql = MARIA_FORMS[mode].format(s=secret)
    traced = Traced()
    engine = create_engine(MARIA_URL)

    @event.listens_for(engine, "connect")
    def _mode(dbapi_conn: Any, record: Any) -> None:
        _run(dbapi_conn, f"SET SESSION sql_mode = CONCAT(@@sql_mode, ',{MARIA_MODES[mode]}')")

    instrument_sqlalchemy(traced.provider, engine)  # undone first if an earlier test left it on
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(sql)).all()
    finally:
        uninstrument_sqlalchemy()
        engine.dispose()
        traced.provider.shutdown()
    assert secret in repr(rows)
    assert any("SELECT" in s for s in traced.statements()), traced.statements()
    assert not any(secret in span.to_json() for span in traced.exported())


def _maria_smuggles_for_real(conn: Any, other: Any, sql: str) -> None:
    _run(conn, sql)
    assert _maria_lock_holder(other) is not None
    _run(conn, "SELECT RELEASE_ALL_LOCKS()")
    assert _maria_lock_holder(other) is None


@pytest.mark.parametrize("mode", sorted(MARIA_SMUGGLED_CALL))
def test_mariadb_explain_analyze_runs_no_call_hidden_by_the_sql_mode(mode: str) -> None:
    conn, other = _maria(mode), _maria("no_backslash_escapes")
    try:
        sql = MARIA_SMUGGLED_CALL[mode].format(lock=MARIA_LOCK)
        _maria_smuggles_for_real(conn, other, sql)
        explainer = Explainer(ANALYZE)
        assert explainer.explain(conn, "mariadb", sql, None, "fp") is None
        assert _maria_lock_holder(other) is None, "ANALYZE ran the hidden GET_LOCK"
        assert explainer.stats()["skipped"] == {"side_effects": 1}
    finally:
        _run(conn, "SELECT RELEASE_ALL_LOCKS()")
        conn.close()
        other.close()


@pytest.mark.parametrize("mode", sorted(MARIA_SMUGGLED))
def test_mariadb_explain_runs_no_statement_smuggled_by_the_sql_mode(mode: str) -> None:
    conn, other = _maria(mode, multi_statements=True), _maria("no_backslash_escapes")
    try:
        sql = MARIA_SMUGGLED[mode].format(lock=MARIA_LOCK)
        _maria_smuggles_for_real(conn, other, sql)
        conn.close()  # a fresh session: the multi-statement results above are all read
        conn = _maria(mode, multi_statements=True)
        explainer = Explainer(ANY_PLAN)
        assert explainer.explain(conn, "mariadb", sql, None, "fp") is None
        assert _maria_lock_holder(other) is None, "EXPLAIN ran the smuggled statement"
        assert explainer.stats()["skipped"] == {"not_select": 1}
    finally:
        conn.close()
        other.close()


# --- the readings themselves (no server) --------------------------------------------------------


def test_readings_refuse_and_hide_in_every_mode() -> None:
    for form in PG_SMUGGLED.values():
        assert refusal(form.format(key=1), False, "postgresql") == "not_select", form
    assert refusal(PG_SMUGGLED_CALL.format(key=1), True, "postgresql") == "side_effects"
    for form in MARIA_SMUGGLED.values():
        assert refusal(form.format(lock="k"), False, "mariadb") == "not_select", form
    for form in MARIA_SMUGGLED_CALL.values():
        assert refusal(form.format(lock="k"), True, "mariadb") == "side_effects", form
    for form in PG_NONSTANDARD_FORMS.values():
        assert "SECRET" not in analyze(form.format(s="SECRET"), 4096, "postgresql").sanitized, form
        assert "SECRET" not in analyze(form.format(s="SECRET"), 4096, "other").sanitized, form


def test_statements_without_a_backslash_read_and_fingerprint_as_before() -> None:
    """No backslash, one reading: the second costs nothing and changes nothing."""
    plain = "SELECT id, name FROM users WHERE email = 'a@b' AND n IN (1, 2, 3) -- x"
    result = analyze(plain, 4096, "postgresql")
    assert result.sanitized == "SELECT id, name FROM users WHERE email = ? AND n IN (?, ?, ?)"
    assert result.fingerprint == analyze(plain.replace("a@b", "other"), 4096, "postgresql").fingerprint


# Literal forms as PostgreSQL reads them with standard_conforming_strings off ({c}: the canary)
_OFF_FORMS = [
    "'{c}'",
    "'{c} it''s'",
    "'a\\' {c}'",
    "N'a\\' {c}'",
    "'a\\\\' || '{c}'",
    "'\\\\{c}\\''",
    "E'{c}\\' x'",
    "$${c}\\$$",
    "/* '\\' {c} */",
    "-- '\\' {c}\n",
]
_WORDS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@st.composite
def _off_statements(draw: st.DrawFn) -> tuple[str, list[str], list[str]]:
    """(statement valid with standard_conforming_strings off, its canaries, its code words in order)."""
    canaries: list[str] = []

    def literal() -> str:
        c = f"zq{draw(st.integers(0, 10**6)):07d}k"
        canaries.append(c)
        return draw(st.sampled_from(_OFF_FORMS)).replace("{c}", c)

    column = st.sampled_from(["id", "email", '"Order"', "users.name", "u.id"])
    code = ["SELECT", draw(column), ",", draw(column), "FROM", "users", "u", "WHERE", draw(column), "=", None]
    code += ["AND", draw(column), "IN", "(", None, ",", None, ")", "OR", draw(column), "<>", None, "ORDER", "BY", "id"]
    pieces: list[str] = []
    for token in code:
        pieces.append(literal() if token is None else token)
        pieces.append(draw(st.sampled_from([" ", "\n", "  "])))
    words = [w for token in code if token is not None for w in _WORDS.findall(token)]
    return "".join(pieces), canaries, words


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_off_statements())
def test_differential_statements_of_a_session_with_nonstandard_strings(case: tuple[str, list[str], list[str]]) -> None:
    sql, canaries, words = case
    for dialect in ("postgresql", "other"):
        sanitized = analyze(sql, 100_000, dialect).sanitized
        assert not [c for c in canaries if c in sanitized], (dialect, sql, sanitized)
        it = iter(words)  # code may be hidden (the standard reading's literals), never invented
        assert all(w in it for w in _WORDS.findall(sanitized)), (dialect, sql, sanitized)
