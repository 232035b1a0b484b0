"""Sanitizer and fingerprinter: examples, and property-based fuzzing with hostile input."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_dbperf._errors import scrub_error_text
from otel_dbperf._sql import analyze


@pytest.mark.parametrize(
    ("sql", "sanitized", "summary"),
    [
        ("SELECT * FROM users WHERE email = 'a@b.com'", "SELECT * FROM users WHERE email = ?", "SELECT users"),
        (
            "select * from t where a = 1.5e3 and b = -7 and c = 0xFF",
            "select * from t where a = ? and b = -? and c = ?",
            "SELECT t",
        ),
        ("SELECT 'it''s' FROM t", "SELECT ? FROM t", "SELECT t"),
        ("SELECT E'a\\'b', 'c' FROM t", "SELECT ?, ? FROM t", "SELECT t"),
        ("SELECT $tag$ secret $x$ $tag$ FROM t", "SELECT ? FROM t", "SELECT t"),
        ("SELECT $$ secret $$", "SELECT ?", "SELECT"),
        ("SELECT a /* 'x' secret */ FROM t -- trailing secret", "SELECT a FROM t", "SELECT t"),
        (
            'SELECT "Name" FROM "Users" WHERE n = "bob@example.com"',
            'SELECT "Name" FROM "Users" WHERE n = ?',
            "SELECT Users",
        ),
        (
            "SELECT * FROM t WHERE a = %s AND b = %(b)s AND c = :c AND d = $1 AND e = ?",
            "SELECT * FROM t WHERE a = %s AND b = %(b)s AND c = :c AND d = $1 AND e = ?",
            "SELECT t",
        ),
        ("SELECT a::text FROM t", "SELECT a::text FROM t", "SELECT t"),
        (
            "INSERT INTO public.orders (a, b) VALUES (1, 'x'), (2, 'y')",
            "INSERT INTO public.orders (a, b) VALUES (?, ?), (?, ?)",
            "INSERT orders",
        ),
        (
            "UPDATE accounts SET pw = 'hunter2' WHERE id = 3",
            "UPDATE accounts SET pw = ? WHERE id = ?",
            "UPDATE accounts",
        ),
        ("WITH x AS (SELECT 1) DELETE FROM t USING x", "WITH x AS (SELECT ?) DELETE FROM t USING x", "DELETE t"),
        ("SELECT a FROM t1 JOIN t2 ON t1.id = t2.id", "SELECT a FROM t1 JOIN t2 ON t1.id = t2.id", "SELECT t1 t2"),
        ("SELECT 'unterminated secret", "SELECT ?", "SELECT"),
        ("SELECT 1 /* unterminated secret", "SELECT ?", "SELECT"),
    ],
)
def test_examples(sql: str, sanitized: str, summary: str) -> None:
    a = analyze(sql)
    assert a.sanitized == sanitized
    assert a.summary == summary


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT * FROM t WHERE id IN (1, 2, 3)", "select *  from t where id in (4,5,6,7,8,9,10)"),
        ("SELECT * FROM t WHERE id IN (1)", "SELECT * FROM t WHERE id IN (?, ?)"),
        ("INSERT INTO t (a, b) VALUES (1, 2)", "INSERT INTO t (a, b) VALUES (1, 2), (3, 4), (5, 6)"),
        ("SELECT a FROM t WHERE b = 'x' -- c1", "SELECT a FROM t WHERE b = %s /* traceparent='00-ab' */"),
        ("SELECT a FROM t WHERE b = $1", "SELECT a FROM t WHERE b = :b"),
    ],
)
def test_same_fingerprint(a: str, b: str) -> None:
    assert analyze(a).fingerprint == analyze(b).fingerprint


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT a FROM t", "SELECT b FROM t"),
        ("SELECT a FROM t WHERE x = 1", "SELECT a FROM u WHERE x = 1"),
        ('SELECT "A" FROM t', "SELECT a FROM t WHERE a = 'A'"),
    ],
)
def test_different_fingerprint(a: str, b: str) -> None:
    assert analyze(a).fingerprint != analyze(b).fingerprint


def test_fingerprint_is_stable_across_processes() -> None:
    sql = "SELECT name FROM authors WHERE id IN (1, 2) AND email = 'x@y.z'"
    code = f"from otel_dbperf._sql import analyze; print(analyze({sql!r}).fingerprint)"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert outs == {analyze(sql).fingerprint}


def test_huge_statements_are_bounded() -> None:
    huge_in = "SELECT * FROM t WHERE id IN (" + ", ".join(str(i) for i in range(200_000)) + ")"
    one_mb = "SELECT '" + "x" * 1_000_000 + "' FROM t"
    for sql in (huge_in, one_mb, "(" * 1_000_000, "'" * 1_000_000, "/*" * 500_000, "$a$" * 300_000):
        start = time.perf_counter()
        a = analyze(sql, 4096)
        assert time.perf_counter() - start < 2.0
        assert len(a.sanitized) <= 4096
        assert len(a.fingerprint) == 16


def test_error_text_scrubbing() -> None:
    text = (
        '(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "u_email"\n'
        "DETAIL:  Key (email)=(alice@example.com) already exists.\n"
        "[SQL: INSERT INTO users (email, note) VALUES (%(email)s, 'inline secret')]\n"
        "[parameters: {'email': 'alice@example.com'}]\n"
        "(Background on this error at: https://sqlalche.me/e/20/gkpj)"
    )
    clean = scrub_error_text(text)
    assert "alice@example.com" not in clean and "inline secret" not in clean
    assert "duplicate key value" in clean and "[SQL: INSERT INTO users (email, note) VALUES (%(email)s, ?)]" in clean


def test_many_sqlalchemy_blocks_never_leak() -> None:
    text = "[SQL: SELECT 'a@b.c']\n[parameters: ('x@y.z',)]\n" * 3000
    start = time.perf_counter()
    clean = scrub_error_text(text)
    assert time.perf_counter() - start < 2.0
    assert "a@b.c" not in clean and "x@y.z" not in clean


@pytest.mark.parametrize(
    ("raw", "secret"),
    [
        (
            "relation \"t\" does not exist\nLINE 1: SELECT * FROM t WHERE email = 'a@b.c'\n                      ^",
            "a@b.c",
        ),
        (
            'null value in column "x" violates not-null constraint\nDETAIL:  Failing row contains (1, bob@x.io, null).',
            "bob@x.io",
        ),
        (
            "duplicate key value violates unique constraint\nDETAIL:  Key (lower(email))=(ann@x.io) already exists.",
            "ann@x.io",
        ),
        (
            "insert or update violates foreign key\nDETAIL:  Key (owner)=(carl@x.io) is not present in table",
            "carl@x.io",
        ),
        ("(1062, \"Duplicate entry 'dora@x.io' for key 'users.email'\")", "dora@x.io"),
        ("syntax error at or near\nQUERY:  UPDATE t SET pw = 'hunter2'\nCONTEXT:  PL/pgSQL function f()", "hunter2"),
    ],
)
def test_database_error_messages_lose_their_values(raw: str, secret: str) -> None:
    clean = scrub_error_text(raw)
    assert secret not in clean
    assert clean.splitlines()[0] == raw.splitlines()[0] or "Duplicate entry '?'" in clean


_sql_pieces = st.sampled_from(
    [
        "SELECT",
        "select",
        " ",
        "\n",
        "\t",
        ",",
        "(",
        ")",
        "'",
        "''",
        '"',
        "`",
        "$$",
        "$t$",
        "$1",
        "?",
        "%s",
        ":x",
        "--",
        "/*",
        "*/",
        "\\",
        "E'",
        "IN",
        "VALUES",
        "FROM",
        "users",
        "JOIN",
        ".",
        "0x1F",
        "1e9",
        "3.14",
        "-",
        "\x00",
        "\udcff",
        "é",
        "中",
        "::",
        "%(a)s",
        "WITH",
        "UPDATE",
        "INTO",
    ]
)
hostile = st.one_of(
    st.text(max_size=400),
    st.lists(_sql_pieces, max_size=200).map("".join),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.tuples(st.lists(_sql_pieces, max_size=30).map("".join), st.integers(1, 20_000)).map(lambda t: t[0] * t[1]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile)
def test_fuzz_never_raises_bounded_time_and_output(sql: str) -> None:
    start = time.perf_counter()
    a = analyze(sql, 512)
    assert time.perf_counter() - start < 2.0
    assert len(a.sanitized) <= 512
    assert len(a.fingerprint) == 16 and int(a.fingerprint, 16) >= 0
    assert len(a.summary) <= 255
    assert analyze(sql, 512) == a  # deterministic
    start = time.perf_counter()
    scrub_error_text(sql)
    assert time.perf_counter() - start < 2.0


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.lists(
        _sql_pieces.filter(lambda p: p not in ("'", "E'", "\\", "--", "/*", "$$", "$t$", '"', "`", "''")), max_size=20
    ).map("".join),
    secret=st.from_regex(r"[a-z]{3,10}@[a-z]{3,8}\.com", fullmatch=True),
    suffix=st.lists(_sql_pieces, max_size=20).map("".join),
)
def test_fuzz_string_literals_never_leak(prefix: str, secret: str, suffix: str) -> None:
    sql = f"{prefix} = '{secret}' {suffix}"
    assert secret not in analyze(sql).sanitized
