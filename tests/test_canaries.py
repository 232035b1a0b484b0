"""Nothing leaks: unique canaries through every path a value can take, every output scanned.

Each case puts its own canary (``CANARY_<hex>_<driver>_<case>_<hex>_YRANAC``, or a random number)
where a secret would be: SQL literals in every quoting form of PostgreSQL, MariaDB and SQLite,
bound parameter values (the control), statements whose span name is derived from their text,
error texts of every driver, the app's log records, EXPLAIN plans, a source line that issues a
slow query, and the configuration dump. ``tests/apps/canary_app.py`` runs all cases for real
under ``opentelemetry-instrument`` behind uvicorn, twice: with stock settings, and with every
query slow (EXPLAIN, stack traces, slow-query logs, DEBUG dump on). Then every output is
scanned for every canary: exported spans (names, attributes, events, status), log records,
metric points, the raw OTLP bodies, every profiler endpoint (query-details of every id), the
process's stdout and stderr, and every file it wrote. A hit names the run, the output, the
field and the case; a fragment (a canary cut by an excerpt) counts too. Profiler requests that
carry a canary (bad parameters, a wrong token) check that the API never echoes what it is sent.

The tests share the two runs and each reports one family of cases: a line per case saying
where it leaked, then every hit. Two more check that the cases really ran (values came back,
errors happened and quoted their canary) and that every output held data to scan.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    APPS,
    BIN,
    MARIA_URL,
    PG_DB,
    PG_HOST,
    PG_PORT,
    free_port,
    maria_connect,
    marker_line,
)
from otlp_receiver import Receiver

PREFIX, SUFFIX = "CANARY", "YRANAC"
APP_FILE = APPS / "canary_app.py"
SOURCE_CANARY = re.search(r'"(CANARY_\w+_source_line_\w+)"', APP_FILE.read_text())[1]  # type: ignore[index]
# a literal on the source line of a call that raises (exception.stacktrace of the app's log record)
RAISE_CANARY = re.search(r'"(CANARY_\w+_source_line_raise_\w+)"', APP_FILE.read_text())[1]  # type: ignore[index]
PG_VIAS = ("sa_psycopg", "sa_psycopg2", "sa_asyncpg", "psycopg", "psycopg2", "asyncpg")
DRIVER = {  # the DB-API driver under each way of running a statement
    "sa_psycopg": "psycopg",
    "sa_psycopg2": "psycopg2",
    "sa_asyncpg": "asyncpg",
    "sa_pymysql": "pymysql",
    "sa_sqlite": "sqlite3",
}
DIALECT = {"postgresql": PG_VIAS, "mariadb": ("sa_pymysql",), "sqlite": ("sa_sqlite", "sqlite3")}
BS = "C:\\tmp\\"  # a value ending in a backslash

# --- the cases ------------------------------------------------------------------------------
# (name, family, SQL, params, expect). In the SQL: <C0>.. canaries, <N0>.. numeric canaries,
# <F0> a decimal canary, <P0>.. placeholders, <T> the items table, <BIG> the 20k-row table,
# <ENUM> the enum type, <ID> a fresh primary key, <Q> a unique column alias. expect: "value"
# (the query returns every canary), "ran" (it ran), "error" (it failed, its error text quoting
# the first canary). family: literal, span_name, bound, error, log, explain.
Case = tuple[str, str, str, list[str], str]

PG_LITERALS: list[Case] = [
    ("standard", "literal", "SELECT id, '<C0>' AS v FROM <T> WHERE id = 1", [], "value"),
    ("doubled_quote", "literal", "SELECT 'it''s <C0>' AS v", [], "value"),
    ("backslash_end", "literal", r"SELECT id FROM <T> WHERE name = 'C:\tmp\' AND email = '<C0>'", [], "ran"),
    ("backslash_end_value", "literal", r"SELECT 'C:\tmp\' AS a, '<C0>' AS b", [], "value"),
    ("escape_string", "literal", r"SELECT E'it\'s <C0>' AS v", [], "value"),
    ("unicode_string", "literal", "SELECT U&'<C0>' AS v", [], "value"),
    ("national_string", "literal", "SELECT N'<C0>' AS v", [], "value"),
    ("dollar_empty_tag", "literal", "SELECT $$<C0>$$ AS v, id FROM <T> WHERE id = 1", [], "value"),
    ("dollar_tag", "literal", "SELECT $tag$<C0>$tag$ AS v", [], "value"),
    ("dollar_non_ascii_tag", "literal", "SELECT $é$<C0>$é$ AS v", [], "value"),
    ("nested_comment", "literal", "SELECT /* a /* b */ <C0> */ id FROM <T> WHERE id = 1", [], "ran"),
    ("line_comment", "literal", "SELECT id FROM <T> -- <C0>\nWHERE id = 1", [], "ran"),
    ("number", "literal", "SELECT id, <N0> AS v FROM <T> WHERE id = 1", [], "value"),
    ("decimal", "literal", "SELECT <F0> AS v", [], "value"),
    ("in_list", "literal", "SELECT id FROM <T> WHERE name IN ('<C0>', '<C1>')", [], "ran"),
    ("in_list_numbers", "literal", "SELECT id FROM <T> WHERE id IN (<N0>, <N1>)", [], "ran"),
    ("values", "span_name", "VALUES('<C0>')", [], "value"),
    ("select_no_space", "span_name", "SELECT'<C0>'", [], "value"),
    ("bound", "bound", "SELECT id, CAST(<P0> AS text) AS v FROM <T> WHERE id = 1", ["<C0>"], "value"),
    ("bound_after_backslash", "bound", "SELECT id FROM <T> WHERE name = <P0> AND email = <P1>", [BS, "<C0>"],
     "ran"),
    # standard_conforming_strings off for the rest of the group on the bare drivers' one session (SQLAlchemy
    # rolls it back with its transaction); then forms valid under both rules: <C0> a name with it on, in a
    # string with it off
    ("strings_off", "literal", "SELECT set_config('standard_conforming_strings', 'off', false) AS s", [], "ran"),
    ("bs_either_rule", "literal", r"SELECT 'a\' AS <C0>, ' AS v -- '", [], "ran"),
    ("bs_either_rule_n", "literal", r"SELECT N'a\' AS <C0>, ' AS v -- '", [], "ran"),
]  # fmt: skip
PG_ERRORS: list[Case] = [
    ("int_literal", "error", "SELECT id FROM <T> WHERE id = '<C0>'", [], "error"),
    ("int_literal_long_excerpt", "error",  # PostgreSQL's "LINE 1: ..." excerpt cuts the statement
     "SELECT id, '<C1>' AS pad FROM <T> WHERE name <> '" + "a" * 70 + "' AND id = '<C0>' AND email <> '<C2>'",
     [], "error"),
    ("int_bound", "error", "SELECT id FROM <T> WHERE id = <P0>", ["<C0>"], "error"),
    ("enum_literal", "error", "SELECT id FROM <T> WHERE mood = '<C0>'", [], "error"),
    ("enum_bound", "error", "SELECT id FROM <T> WHERE mood = CAST(<P0> AS <ENUM>)", ["<C0>"], "error"),
    ("syntax_near_literal", "error", "SELECT id FROM <T> WHERE email = 'a' '<C0>'", [], "error"),
    ("json_literal", "error", """SELECT CAST('{"a": <C0>}' AS json)""", [], "error"),
    ("json_bound", "error", "SELECT CAST(<P0> AS json)", ['{"a": <C0>}'], "error"),
    ("unique_bound", "error", "INSERT INTO <T> (id, name, email) VALUES (<ID>, 'dup', <P0>)", ["<C0>"], "error"),
    ("unique_literal", "error", "INSERT INTO <T> (id, name, email) VALUES (<ID>, 'dup', '<C0>')", [], "error"),
    ("not_null_bound", "error", "INSERT INTO <T> (id, name, email) VALUES (<ID>, <P0>, NULL)", ["<C0>"], "error"),
    # text the app's own PL/pgSQL writes: no quotes around the values, any SQLSTATE
    ("raise_message", "error", "DO $$ BEGIN RAISE EXCEPTION USING MESSAGE = 'order <C0> rejected', "
     "DETAIL = 'customer <C1>', HINT = 'ask <C2>'; END $$", [], "error"),
    ("raise_errcode_23505", "error",
     "DO $$ BEGIN RAISE EXCEPTION USING MESSAGE = 'taken <C0>', ERRCODE = '23505'; END $$", [], "error"),
]  # fmt: skip
MARIA_LITERALS: list[Case] = [
    ("standard", "literal", "SELECT id, '<C0>' AS v FROM <T> WHERE id = 1", [], "value"),
    ("doubled_quote", "literal", "SELECT 'it''s <C0>' AS v", [], "value"),
    ("backslash_escape", "literal", r"SELECT 'it\'s <C0>' AS v", [], "value"),
    ("backslash_end", "literal", r"SELECT id FROM <T> WHERE name = 'C:\\tmp\\' AND email = '<C0>'", [], "ran"),
    ("backslash_end_value", "literal", r"SELECT 'C:\\tmp\\' AS a, '<C0>' AS b", [], "value"),
    ("double_quoted", "literal", 'SELECT "<C0>" AS v', [], "value"),
    ("double_quoted_escape", "literal", r'SELECT "a\" <C0>" AS v', [], "value"),
    ("double_quoted_where", "literal", 'SELECT id FROM <T> WHERE name = "<C0>"', [], "ran"),
    ("national_string", "literal", "SELECT N'<C0>' AS v", [], "value"),
    ("hash_comment", "literal", "SELECT id FROM <T> # <C0>\nWHERE id = 1", [], "ran"),
    ("block_comment", "literal", "SELECT /* <C0> */ id FROM <T> WHERE id = 1", [], "ran"),
    ("line_comment", "literal", "SELECT id FROM <T> -- <C0>\nWHERE id = 1", [], "ran"),
    ("number", "literal", "SELECT id, <N0> AS v FROM <T> WHERE id = 1", [], "value"),
    ("decimal", "literal", "SELECT <F0> AS v", [], "value"),
    ("in_list", "literal", "SELECT id FROM <T> WHERE name IN ('<C0>', '<C1>')", [], "ran"),
    ("in_list_numbers", "literal", "SELECT id FROM <T> WHERE id IN (<N0>, <N1>)", [], "ran"),
    ("values", "span_name", "VALUES('<C0>')", [], "value"),
    ("select_no_space", "span_name", "SELECT'<C0>'", [], "value"),
    ("bound", "bound", "SELECT id, CAST(<P0> AS CHAR) AS v FROM <T> WHERE id = 1", ["<C0>"], "value"),
    ("bound_after_backslash", "bound", "SELECT id FROM <T> WHERE name = <P0> AND email = <P1>", [BS, "<C0>"],
     "ran"),
    # valid with and without NO_BACKSLASH_ESCAPES: a value here, a name under that mode
    ("bs_either_mode", "literal", r"SELECT 'a\' AS <C0>, ' AS v -- '", [], "value"),
]  # fmt: skip
MARIA_ERRORS: list[Case] = [
    ("int_literal", "error", "INSERT INTO <T> (id, name, email, n) VALUES (<ID>, 'x', 'x<ID>', '<C0>')", [], "error"),
    ("int_bound", "error", "INSERT INTO <T> (id, name, email, n) VALUES (<ID>, 'x', 'x<ID>', <P0>)", ["<C0>"], "error"),
    ("duplicate_bound", "error", "INSERT INTO <T> (id, name, email) VALUES (<ID>, 'dup', <P0>)", ["<C0>"], "error"),
    ("syntax_near_literal", "error", "SELECT id FROM <T> WHERE email '<C0>'", [], "error"),
    # text the app's own SIGNAL writes (error 1644; or any number MYSQL_ERRNO gives it)
    ("signal", "error", "BEGIN NOT ATOMIC SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'order <C0> rejected'; END",
     [], "error"),
    ("signal_bound", "error",
     "BEGIN NOT ATOMIC DECLARE m VARCHAR(255) DEFAULT <P0>; SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = m; END",
     ["order <C0> rejected"], "error"),
    ("signal_errno_1062", "error",
     "BEGIN NOT ATOMIC SIGNAL SQLSTATE '23000' SET MYSQL_ERRNO = 1062, MESSAGE_TEXT = 'taken <C0>'; END", [], "error"),
]  # fmt: skip
SQLITE_LITERALS: list[Case] = [
    ("standard", "literal", "SELECT id, '<C0>' AS v FROM <T> WHERE id = 1", [], "value"),
    ("doubled_quote", "literal", "SELECT 'it''s <C0>' AS v", [], "value"),
    ("backslash_end", "literal", r"SELECT id FROM <T> WHERE name = 'C:\tmp\' AND email = '<C0>'", [], "ran"),
    ("backslash_end_value", "literal", r"SELECT 'C:\tmp\' AS a, '<C0>' AS b", [], "value"),
    ("double_quoted", "literal", 'SELECT "<C0>" AS v', [], "value"),
    ("double_quoted_where", "literal", 'SELECT id FROM <T> WHERE name = "<C0>"', [], "ran"),
    ("block_comment", "literal", "SELECT /* <C0> */ id FROM <T> WHERE id = 1", [], "ran"),
    ("line_comment", "literal", "SELECT id FROM <T> -- <C0>\nWHERE id = 1", [], "ran"),
    ("number", "literal", "SELECT id, <N0> AS v FROM <T> WHERE id = 1", [], "value"),
    ("decimal", "literal", "SELECT <F0> AS v", [], "value"),
    ("in_list", "literal", "SELECT id FROM <T> WHERE name IN ('<C0>', '<C1>')", [], "ran"),
    ("in_list_numbers", "literal", "SELECT id FROM <T> WHERE id IN (<N0>, <N1>)", [], "ran"),
    ("values", "span_name", "VALUES('<C0>')", [], "value"),
    ("select_no_space", "span_name", "SELECT'<C0>'", [], "value"),
    ("bound", "bound", "SELECT id, <P0> AS v FROM <T> WHERE id = 1", ["<C0>"], "value"),
    ("bound_after_backslash", "bound", "SELECT id FROM <T> WHERE name = <P0> AND email = <P1>", [BS, "<C0>"],
     "ran"),
]  # fmt: skip
SQLITE_ERRORS: list[Case] = [
    ("unrecognized_token", "error", "SELECT id FROM <T> WHERE name = '<C0>", [], "error"),
    ("syntax_near_literal", "error", "SELECT id FROM <T> WHERE id = 1 '<C0>'", [], "error"),
]
EXPLAIN_PG_SQLITE: list[Case] = [
    ("bound_after_backslash", "explain", "SELECT id AS <Q> FROM <BIG> WHERE name = <P0> AND email = <P1>",
     [BS, "<C0>"], "ran"),
    ("literal_after_backslash", "explain", r"SELECT id AS <Q> FROM <BIG> WHERE name = 'C:\tmp\' AND email = '<C0>'",
     [], "ran"),
    ("bound", "explain", "SELECT id AS <Q> FROM <BIG> WHERE email = <P0> OR name = <P1>", ["<C0>", "<C1>"], "ran"),
]  # fmt: skip
EXPLAIN_MARIA: list[Case] = [
    EXPLAIN_PG_SQLITE[0],
    ("literal_after_backslash", "explain",
     r"SELECT id AS <Q> FROM <BIG> WHERE name = 'C:\\tmp\\' AND email = '<C0>'", [], "ran"),
    EXPLAIN_PG_SQLITE[2],
]  # fmt: skip
# the app's logger.exception(...) inside an except, and a Flask view failing (both: family "log")
LOGGED = {
    "sa_psycopg": ["unique_bound", "int_literal", "raise_message"],
    "sa_pymysql": ["duplicate_bound", "signal_bound"],
    "sa_sqlite": ["unrecognized_token"],
}
# requests to the profiler API carrying a canary, and the status each gets (wrong_token: with a token set)
PROBES = {"bad_threshold": 400, "bad_limit": 400, "bad_id": 400, "unknown_path": 404, "wrong_token": 401}
FLASK_FAILURES = {"sa_psycopg": "not_null_bound", "sa_pymysql": "int_bound", "sa_sqlite": "syntax_near_literal"}


@dataclass(frozen=True)
class Canary:
    text: str
    family: str  # literal, span_name, bound, error, log, explain, stack, debug
    dialect: str  # postgresql, mariadb, sqlite or ""
    via: str  # sa_<driver> (through SQLAlchemy) or the bare driver
    case: str
    base: str = ""  # the case these canaries belong to (a case may have several)

    @property
    def case_key(self) -> str:
        return f"{self.family}/{self.via}/{self.base}"

    @property
    def driver(self) -> str:
        return DRIVER.get(self.via, self.via)

    @property
    def kind(self) -> str:
        return "/".join(x for x in (self.family, self.dialect, self.via, self.case) if x)


@dataclass
class Spec:
    tables: dict[str, str]
    canaries: dict[str, Canary] = field(default_factory=dict)
    groups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    expect: dict[str, str] = field(default_factory=dict)  # case id -> value / ran / error
    seeds: dict[str, list[tuple[str, list[Any]]]] = field(default_factory=dict)  # dialect -> statements
    boom: list[str] = field(default_factory=list)  # case ids for /boom
    env: dict[str, str] = field(default_factory=dict)  # the DEBUG dump's secrets (slow run)
    probes: dict[str, str] = field(default_factory=dict)  # profiler probe -> its path
    probe_canaries: dict[str, str] = field(default_factory=dict)  # profiler probe -> its canary

    def new(self, family: str, dialect: str, via: str, case: str, numeric: str = "", base: str = "") -> str:
        if numeric == "int":
            text = str(10**15 + secrets.randbelow(9 * 10**15))
        elif numeric == "decimal":
            text = f"{100000 + secrets.randbelow(900000)}.{secrets.randbelow(10**8):08d}7"
        else:
            # random hex first and last: even a short cut end of it says whose it is
            text = f"{PREFIX}_{secrets.token_hex(4)}_{via}_{case}_{secrets.token_hex(4)}_{SUFFIX}"
        self.canaries[text] = Canary(text, family, dialect, via, case, base or case)
        return text


def _placeholders(via: str, n: int) -> list[str]:
    if via.startswith("sa_"):
        return [f":p{i}" for i in range(n)]
    if via == "asyncpg":
        return [f"${i + 1}" for i in range(n)]
    if via == "sqlite3":
        return ["?"] * n
    return ["%s"] * n


def _add(spec: Spec, group: str, dialect: str, via: str, case: Case, mode: str = "run") -> str:
    name, family, sql, params, expect = case
    family = "log" if mode != "run" else family
    n = len(spec.expect)
    case_id = f"c{n}"
    made: dict[str, str] = {}

    def canary(token: str, numeric: str = "") -> str:
        if token not in made:
            label = f"{name}_{token}" if token != "C0" else name
            made[token] = spec.new(family, dialect, via, label, numeric, base=name)
        return made[token]

    def fill(s: str) -> str:
        for token in sorted(set(re.findall(r"<([CNF]\d)>", s))):
            s = s.replace(f"<{token}>", canary(token, {"C": "", "N": "int", "F": "decimal"}[token[0]]))
        return s

    sql = fill(sql)
    values = [fill(p) for p in params]
    for i, ph in enumerate(_placeholders(via, len(values))):
        sql = sql.replace(f"<P{i}>", ph)
    sql = sql.replace("<ID>", str(1000 + n)).replace("<Q>", f"q{n}")
    for key, table in spec.tables.items():
        sql = sql.replace(f"<{key}>", table)
    bound: Any = {f"p{i}": v for i, v in enumerate(values)} if via.startswith("sa_") else values
    spec.groups.setdefault(group, []).append(
        {"id": case_id, "via": via, "sql": sql, "params": bound, "canaries": list(made.values()), "mode": mode}
    )
    spec.expect[case_id] = expect
    if name in ("unique_bound", "unique_literal", "duplicate_bound"):  # the row it collides with
        spec.seeds.setdefault(dialect, []).append((f"INSERT INTO {spec.tables['T']} (id, name, email) VALUES "
                                                   f"({5000 + n}, 'seed', %s)", [made["C0"]]))  # fmt: skip
    return case_id


def build_spec(tables: dict[str, str]) -> Spec:
    spec = Spec(tables)
    explain = {"postgresql": EXPLAIN_PG_SQLITE, "mariadb": EXPLAIN_MARIA, "sqlite": EXPLAIN_PG_SQLITE}
    for dialect, vias in DIALECT.items():  # first: the EXPLAIN budget is a few plans a minute
        for via in (v for v in vias if v.startswith("sa_")):
            for case in explain[dialect]:
                _add(spec, f"explain.{via}", dialect, via, case)
    literals = {"postgresql": PG_LITERALS, "mariadb": MARIA_LITERALS, "sqlite": SQLITE_LITERALS}
    errors = {"postgresql": PG_ERRORS, "mariadb": MARIA_ERRORS, "sqlite": SQLITE_ERRORS}
    for dialect, vias in DIALECT.items():
        for via in vias:
            for case in literals[dialect]:
                _add(spec, f"literal.{via}", dialect, via, case)
            if via == "asyncpg":  # asyncpg names cursor spans "CURSOR: <first word>"
                _add(spec, "literal.asyncpg", dialect, via, ("cursor_select_no_space", "span_name",
                                                              "SELECT'<C0>'", [], "value"))  # fmt: skip
                spec.groups["literal.asyncpg"][-1]["cursor"] = True
            for case in errors[dialect]:
                _add(spec, f"error.{via}", dialect, via, case)
    by_name = {(d, c[0]): c for d, cases in errors.items() for c in cases}
    dialect_of = {"sa_psycopg": "postgresql", "sa_pymysql": "mariadb", "sa_sqlite": "sqlite"}
    for via, names in LOGGED.items():
        for name in names:
            _add(spec, f"logs.{via}", dialect_of[via], via, by_name[(dialect_of[via], name)], mode="log")
    for via, name in FLASK_FAILURES.items():
        spec.boom.append(_add(spec, f"boom.{via}", dialect_of[via], via, by_name[(dialect_of[via], name)], "raise"))
    spec.canaries[SOURCE_CANARY] = Canary(SOURCE_CANARY, "stack", "postgresql", "sa_psycopg", "source_line", "src")
    spec.canaries[RAISE_CANARY] = Canary(RAISE_CANARY, "stack", "postgresql", "sa_psycopg", "source_line_raise",
                                         "src_raise")  # fmt: skip
    secret = {v: spec.new("debug", "", "config", v) for v in ("jaeger_password", "slash_password", "api_key",
                                                               "otlp_header", "profiler_token")}  # fmt: skip
    probe = {v: spec.new("profiler", "", "api", v) for v in PROBES}
    spec.probes = {  # the API must answer 4xx naming the parameter, never echoing (or logging) the value
        "bad_threshold": f"slow-queries?threshold={probe['bad_threshold']}",
        "bad_limit": f"report?last_n_queries={probe['bad_limit']}",
        "bad_id": f"query-details/{probe['bad_id']}",
        "unknown_path": probe["unknown_path"],
        "wrong_token": "stats",  # the canary is the bearer token
    }
    spec.probe_canaries = probe
    spec.env = {
        "DBPERF_JAEGER_URL": f"https://jaeger:{secret['jaeger_password']}@jaeger.example:16686",
        "OTEL_EXPORTER_JAEGER_ENDPOINT": f"https://jaeger:pa/ss{secret['slash_password']}@jaeger.example:14268/api",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"https://zipkin.example:9411/api/v2/spans?api_key={secret['api_key']}",
        "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={secret['otlp_header']}",
        "DBPERF_PROFILER_TOKEN": secret["profiler_token"],
    }
    return spec


# --- the scanner ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    run: str
    output: str  # span, log, metric, otlp-raw, profiler, stderr, stdout, file
    source: str  # which span / record / metric / endpoint / line / file
    field: str  # which part of it: name, attribute x, event e attribute x, status message, body, JSON path
    kind: str  # the source's kind, for the summary: the span's scope, the endpoint without ids, ...
    canary: Canary | None  # None: a fragment too short to tell whose it is
    whole: bool
    excerpt: str

    def __str__(self) -> str:
        who = self.canary.kind if self.canary else "unattributable fragment"
        part = "" if self.whole else " (fragment)"
        return f"[{self.run}] {self.output}: {self.source} {self.field}: {who}{part} in ...{self.excerpt}..."


class Scanner:
    def __init__(self, canaries: dict[str, Canary]) -> None:
        self.canaries = canaries
        self.words = [c for c in canaries if c.startswith(PREFIX)]
        self.numbers = [c for c in canaries if not c.startswith(PREFIX)]
        self.longest = max(len(c) for c in self.words)

    def find(self, text: str) -> list[tuple[Canary | None, bool, str]]:
        """Every canary in ``text``, whole or cut (an excerpt may start or end inside one)."""
        found: dict[tuple[int, str | None], tuple[Canary | None, bool, str]] = {}
        cases = {self.canaries[w].case_key for w in self.words if w in text}  # cases seen whole here

        def note(start: int, end: int, candidates: list[str], whole: bool) -> None:
            if len(candidates) > 1:  # a short fragment: prefer a case that also shows whole nearby
                candidates = [w for w in candidates if self.canaries[w].case_key in cases] or candidates
            same_case = len({self.canaries[w].case_key for w in candidates}) == 1
            word = candidates[0] if candidates and same_case else None
            excerpt = text[max(0, start - 30) : end + 30].replace("\n", "\\n")
            found.setdefault((start, word), (self.canaries[word] if word else None, whole, excerpt))

        covered: set[int] = set()
        for m in re.finditer(PREFIX, text):
            window = text[m.start() : m.start() + self.longest]
            sizes = {w: _common_prefix(w, window) for w in self.words}
            size = max(sizes.values())
            best = [w for w, n in sizes.items() if n == size and n > len(PREFIX) + 1]
            whole = len(best) == 1 and size == len(best[0])
            note(m.start(), m.start() + size, best, whole)
            if whole:
                covered.add(m.start() + size - len(SUFFIX))
        for m in re.finditer(SUFFIX, text):
            if m.start() in covered:
                continue
            window = text[max(0, m.end() - self.longest) : m.end()]
            sizes = {w: _common_suffix(w, window) for w in self.words}
            size = max(sizes.values())
            best = [w for w, n in sizes.items() if n == size and n > len(SUFFIX) + 1]
            note(m.end() - size, m.end(), best, len(best) == 1 and size == len(best[0]))
        for number in self.numbers:
            for m in re.finditer(re.escape(number), text):
                note(m.start(), m.end(), [number], True)
        return list(found.values())


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _common_suffix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _leaves(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(k, f"{path}<key>")
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    elif value is not None:
        yield path, value if isinstance(value, str) else json.dumps(value)


# --- the runs -------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    results: dict[str, Any]  # case id -> the app's account of it
    statuses: dict[str, int]  # request path -> HTTP status
    spans: list[dict[str, Any]]
    logs: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    profiler: dict[str, Any]  # endpoint -> JSON body
    stdout: str
    stderr: str
    files: dict[str, str]
    hits: list[Hit]


def _maria_connect() -> Any:
    return maria_connect(autocommit=True)


def _services() -> None:
    _maria_connect().close()  # skips without MariaDB (fails under DBPERF_REQUIRE_SERVICES=1)


def _create_tables(spec: Spec, pg_dsn: str) -> None:
    import psycopg

    t, big, enum = spec.tables["T"], spec.tables["BIG"], spec.tables["ENUM"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TYPE {enum} AS ENUM ('happy', 'sad')")
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name text, email text UNIQUE NOT NULL, "
                     f"mood {enum}, n int NOT NULL DEFAULT 0)")  # fmt: skip
        conn.execute(f"CREATE TABLE {big} (id serial PRIMARY KEY, name text, email text, qty int)")
        conn.execute(
            f"INSERT INTO {big} (name, email, qty) SELECT 'n' || g, 'e' || g, g FROM generate_series(1, 20000) g"
        )
        conn.execute(f"ANALYZE {big}")
        conn.execute(f"INSERT INTO {t} (id, name, email) VALUES (1, 'seed', 'seed@example.invalid')")
        for sql, params in spec.seeds.get("postgresql", []):
            conn.execute(sql, params)
    maria = _maria_connect()
    with maria.cursor() as cur:
        cur.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name varchar(200), email varchar(200) NOT NULL UNIQUE, "
                    f"n int NOT NULL DEFAULT 0) ENGINE=InnoDB")  # fmt: skip
        cur.execute(f"CREATE TABLE {big} (id int AUTO_INCREMENT PRIMARY KEY, name varchar(40), email varchar(40), "
                    f"qty int) ENGINE=InnoDB")  # fmt: skip
        cur.execute(f"INSERT INTO {big} (name, email, qty) SELECT concat('n', seq), concat('e', seq), seq "
                    f"FROM seq_1_to_20000")  # fmt: skip
        cur.execute(f"ANALYZE TABLE {big}")
        cur.fetchall()
        cur.execute(f"INSERT INTO {t} (id, name, email) VALUES (1, 'seed', 'seed@example.invalid')")
        for sql, params in spec.seeds.get("mariadb", []):
            cur.execute(sql, params)
    maria.close()


def _drop_tables(spec: Spec, pg_dsn: str) -> None:
    import psycopg

    t, big, enum = spec.tables["T"], spec.tables["BIG"], spec.tables["ENUM"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {t}, {big}")
        conn.execute(f"DROP TYPE IF EXISTS {enum}")
    maria = _maria_connect()
    with maria.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {t}, {big}")
    maria.close()


def _request(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _profiler(api: str, token: str | None, at_least: int) -> dict[str, Any]:
    """Every read endpoint, and query-details of every id, once the history has settled."""
    stable, last, deadline = 0, -1, time.monotonic() + 60
    while (stable < 3 or last < at_least) and time.monotonic() < deadline:  # fed every 0.5 s
        total = json.loads(_request(f"{api}/stats", token)[1])["data"]["total_queries"]
        stable, last = (stable + 1, last) if total == last else (0, total)
        time.sleep(0.5)
    bodies: dict[str, Any] = {}
    for path in ("stats", "health", "openapi.json", "report?last_n_queries=5000&top=100",
                 "slow-queries?threshold=0&limit=1000"):  # fmt: skip
        status, body = _request(f"{api}/{path}", token)
        assert status == 200, (path, body)
        bodies[path] = json.loads(body)
    query_id = 1
    while True:
        status, body = _request(f"{api}/query-details/{query_id}", token)
        if status == 404:
            break
        assert status == 200, body
        bodies[f"query-details/{query_id}"] = json.loads(body)
        query_id += 1
    return bodies


def _console_key(line: str) -> str:
    """A console line without its run-specific numbers (times, pids, ports, row ids)."""
    return re.sub(r"\d+", "0", line)


def _launch(
    name: str, spec: Spec, urls: dict[str, str], root: Path, slow: bool, bare: bool = False,
    app_console: frozenset[str] = frozenset(),
) -> Run:  # fmt: skip
    """Run the app (``bare``: without opentelemetry-instrument, for its own console output) and scan it.

    A console line the bare app prints too (``app_console``) is the app's own output, the same
    with and without otel-dbperf: not a leak of ours.
    """
    work = root / name  # the app's directory, its cwd: every file in it but the app is one it wrote
    (work / "tmp").mkdir(parents=True)
    (root / f"{name}-data").mkdir()
    shutil.copy(APP_FILE, work / APP_FILE.name)
    sqlite_file = root / f"{name}-data" / "app.db"
    _create_sqlite_tables(spec, sqlite_file)
    spec_file = root / f"{name}-spec.json"
    spec_file.write_text(json.dumps({
        "urls": {**urls, "sa_sqlite": f"sqlite:///{sqlite_file}", "sqlite3": str(sqlite_file)},
        "groups": spec.groups,
    }))  # fmt: skip
    receiver = Receiver()
    port, profiler_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SERVICE_NAME="canary-app",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_BLRP_SCHEDULE_DELAY="200",
        OTEL_METRIC_EXPORT_INTERVAL="1000",
        DBPERF_PROFILER_ADDR=f"127.0.0.1:{profiler_port}",
        DBPERF_PROFILER_MAX_HISTORY="5000",
        CANARY_SPEC=str(spec_file),
        TMPDIR=str(work / "tmp"),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
    )
    token = None
    if slow:
        env.update(
            DBPERF_SLOW_QUERY_THRESHOLD_MS="0",
            DBPERF_STACKTRACE_THRESHOLD_MS="0",
            DBPERF_EXPLAIN="true",
            DBPERF_EXPLAIN_TIMEOUT_MS="5000",  # not the 200 ms default: a loaded server may take longer to plan
            DBPERF_SLOW_QUERY_LOGS_PER_MINUTE="1000",
            DBPERF_LOG_LEVEL="DEBUG",
            **spec.env,
        )
        token = spec.env["DBPERF_PROFILER_TOKEN"]
    launcher = [] if bare else [str(BIN / "opentelemetry-instrument")]
    cmd = [*launcher, str(BIN / "uvicorn"), "canary_app:app", "--interface", "wsgi",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    out_path, err_path = root / f"{name}.stdout", root / f"{name}.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=err, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    statuses: dict[str, int] = {}
    results: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"app exited: {err_path.read_text()}"
            try:
                if _request(base + "/ping")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"app did not start: {err_path.read_text()}"
            time.sleep(0.2)
        paths = [f"/run/{g}" for g in spec.groups if not g.startswith("boom.")]
        paths += [f"/boom/{case_id}" for case_id in spec.boom] + ["/stack"]
        for path in paths:
            status, body = _request(base + path)
            statuses[path] = status
            if path.startswith("/run/") and status == 200:
                results.update(json.loads(body))
        api = f"http://127.0.0.1:{profiler_port}/profiler"
        profiler = {} if bare else _profiler(api, token, at_least=len(spec.expect))
        for probe, path in {} if bare else spec.probes.items():
            bearer = spec.probe_canaries[probe] if probe == "wrong_token" else token
            status, body = _request(f"{api}/{path}", bearer)
            statuses[f"profiler {probe}"] = status
            profiler[f"{path} (probe {probe})"] = body.decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        receiver.close()
    files = {
        str(p.relative_to(work)): p.read_bytes().decode("utf-8", "replace")
        for p in sorted(work.rglob("*"))
        if p.is_file() and p.name != APP_FILE.name
    }
    run = Run(name, results, statuses, receiver.spans, receiver.logs, receiver.metrics, profiler,
              out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), files, [])  # fmt: skip
    run.hits = _scan(run, Scanner(spec.canaries), receiver.raw, app_console)
    return run


def _create_sqlite_tables(spec: Spec, path: Path) -> None:
    t, big = spec.tables["T"], spec.tables["BIG"]
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, name TEXT, email TEXT NOT NULL UNIQUE, n INT)")
        conn.execute(f"CREATE TABLE {big} (id INTEGER PRIMARY KEY, name TEXT, email TEXT, qty INT)")
        conn.execute(
            f"WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 20000) "
            f"INSERT INTO {big} (name, email, qty) SELECT 'n' || i, 'e' || i, i FROM g"
        )
        conn.execute(f"INSERT INTO {t} (id, name, email) VALUES (1, 'seed', 'seed@example.invalid')")
    conn.close()


def _scan(run: Run, scanner: Scanner, raw_bodies: list[bytes], app_console: frozenset[str]) -> list[Hit]:
    hits: dict[tuple[str, str, str, str, int], Hit] = {}
    seen_in_otlp: set[str] = set()

    def scan(output: str, source: str, kind: str, field: str, text: Any) -> None:
        text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str)
        for i, (canary, whole, excerpt) in enumerate(scanner.find(text)):
            if output in ("span", "log", "metric") and canary:
                seen_in_otlp.add(canary.text)
            key = (output, source, field, canary.text if canary else excerpt, 0 if canary else i)
            hits.setdefault(key, Hit(run.name, output, source, field, kind, canary, whole, excerpt))

    resources: set[str] = set()
    for s in run.spans:
        at, kind = f"span {s['name'][:70]!r} ({s['scope']})", s["scope"].rsplit(".", 1)[-1]
        scan("span", at, kind, "name", s["name"])
        for k, v in s["attributes"].items():
            scan("span", at, kind, f"attribute {k}", v)
        for e in s["events"]:
            scan("span", at, kind, "event name", e["name"])
            for k, v in e["attributes"].items():
                scan("span", at, kind, f"event {e['name']} attribute {k}", v)
        scan("span", at, kind, "status message", s["status"]["message"])
        resources.add(json.dumps(s["resource"], sort_keys=True))
    for r in run.logs:
        at = f"log record {str(r['body'])[:60]!r} ({r['scope']})"
        scan("log", at, r["scope"], "body", r["body"])
        scan("log", at, r["scope"], "event name", r["event_name"])
        for k, v in r["attributes"].items():
            scan("log", at, r["scope"], f"attribute {k}", v)
    for p in run.metrics:
        scan("metric", p["name"], p["name"], "name", p["name"])
        for k, v in p["attributes"].items():
            scan("metric", p["name"], p["name"], f"attribute {k}", v)
        resources.add(json.dumps(p["resource"], sort_keys=True))
    for resource in resources:
        scan("span", "resource", "resource", "attributes", resource)
    for body in raw_bodies:  # a canary in a field the receiver's decoding above does not look at
        for canary, whole, excerpt in scanner.find(body.decode("latin-1")):
            if canary and canary.text not in seen_in_otlp:  # (a whole body is too wide to place a short cut)
                key = ("otlp-raw", "", "", canary.text if canary else excerpt, 0)
                hits.setdefault(key, Hit(run.name, "otlp-raw", "a field", "not decoded", "", canary, whole, excerpt))
    for endpoint, body in run.profiler.items():
        for path, leaf in _leaves(body, ""):
            scan("profiler", f"GET /profiler/{endpoint}", re.sub(r"/\d+$", "/ID", endpoint), path, leaf)
    for output, text in (("stdout", run.stdout), ("stderr", run.stderr)):
        for n, line in enumerate(text.splitlines(), start=1):
            if _console_key(line) not in app_console:  # the app's own line, printed without otel-dbperf too
                scan(output, f"line {n}", output, repr(line[:60]), line)
    for name, content in run.files.items():
        scan("file", name, name, "content", content)
    return list(hits.values())


def _summary(hits: list[Hit]) -> list[str]:
    """One line per case: the drivers it leaked through and where (output, source kind, field)."""
    by_case: dict[str, tuple[set[str], set[str]]] = {}
    for h in hits:
        c = h.canary
        key = "/".join(x for x in (c.family, c.dialect, c.base) if x) if c else "unattributable fragment"
        vias, places = by_case.setdefault(key, (set(), set()))
        if c and c.dialect:
            vias.add(c.via)
        field = re.sub(r"\[\d+\]", "[]", h.field)
        places.add(f"{h.output} {h.kind}: {field}" if h.output not in ("stderr", "stdout") else h.output)
    return [
        f"{case}" + (f" via {','.join(sorted(vias))}" if vias else "") + " -> " + "; ".join(sorted(places))
        for case, (vias, places) in sorted(by_case.items())
    ]


@pytest.fixture(scope="module")
def spec() -> Spec:
    suffix = secrets.token_hex(3)
    return build_spec({"T": f"canary_items_{suffix}", "BIG": f"canary_big_{suffix}", "ENUM": f"canary_mood_{suffix}"})


@pytest.fixture(scope="module")
def runs(spec: Spec, pg_dsn: str, pg_user: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Run]]:
    _services()
    root = tmp_path_factory.mktemp("canaries")
    pg = f"{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}"
    urls = {
        "sa_psycopg": f"postgresql+psycopg://{pg}",
        "sa_psycopg2": f"postgresql+psycopg2://{pg}",
        "sa_asyncpg": f"postgresql+asyncpg://{pg}",
        "psycopg": pg_dsn,
        "psycopg2": pg_dsn,
        "asyncpg": f"postgresql://{pg}",
        "sa_pymysql": MARIA_URL,
    }
    _create_tables(spec, pg_dsn)
    try:
        bare = _launch("bare", spec, urls, root, slow=False, bare=True)
        app_console = frozenset(_console_key(line) for line in (bare.stdout + bare.stderr).splitlines())
        yield [
            _launch("stock", spec, urls, root, slow=False, app_console=app_console),
            _launch("all-slow", spec, urls, root, slow=True, app_console=app_console),
        ]
    finally:
        _drop_tables(spec, pg_dsn)


def _assert_none(hits: list[Hit], what: str) -> None:
    if hits:
        summary = "\n".join(_summary(hits))
        listed = "\n".join(sorted({str(h) for h in hits}))
        pytest.fail(f"{len(hits)} leak(s) of {what}. By case:\n{summary}\nEvery hit:\n{listed}", pytrace=False)


def _hits(runs: list[Run], **match: str) -> list[Hit]:
    return [
        h for run in runs for h in run.hits if h.canary and all(getattr(h.canary, k) == v for k, v in match.items())
    ]


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb", "sqlite"])
def test_sql_literals_never_leave_the_process(runs: list[Run], dialect: str) -> None:
    _assert_none(_hits(runs, family="literal", dialect=dialect), f"{dialect} literals")


def test_span_names_and_operation_names_carry_no_literals(runs: list[Run]) -> None:
    _assert_none(_hits(runs, family="span_name"), "literals in statements that name spans (VALUES('x'), SELECT'x')")


def test_bound_values_never_leave_the_process(runs: list[Run]) -> None:
    _assert_none(_hits(runs, family="bound"), "bound parameter values (the control)")


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg", "pymysql", "sqlite3"])
def test_driver_error_texts_leak_nothing(runs: list[Run], driver: str) -> None:
    hits = [h for h in _hits(runs, family="error") if h.canary and h.canary.driver == driver]
    _assert_none(hits, f"values quoted in {driver} error texts")


def test_app_log_records_leak_nothing(runs: list[Run]) -> None:
    _assert_none(_hits(runs, family="log"), "DB errors in logger.exception(...) and Flask's 'Exception on ...' records")


def test_explain_plans_leak_nothing(runs: list[Run]) -> None:
    _assert_none(_hits(runs, family="explain"), "values in EXPLAIN plans")


def test_stack_traces_carry_no_source_lines(runs: list[Run]) -> None:
    _assert_none(_hits(runs, family="stack"), "a literal written on the source line that issued a slow query")


def test_debug_configuration_dump_masks_secrets(runs: list[Run]) -> None:
    _assert_none(_hits(runs, family="debug"), "secrets in the configuration (DBPERF_LOG_LEVEL=DEBUG)")


def test_profiler_api_echoes_no_request_values(runs: list[Run]) -> None:
    _assert_none(_hits(runs, family="profiler"), "values sent to the profiler API (bad parameters, a wrong token)")


def test_no_unattributable_canary_fragments(runs: list[Run]) -> None:
    _assert_none([h for run in runs for h in run.hits if h.canary is None], "canary fragments")


def test_every_canary_reached_the_database(runs: list[Run], spec: Spec) -> None:
    """The cases ran for real: values came back, errors happened and quoted their canary."""
    problems = []
    for run in runs:
        app = {p: s for p, s in run.statuses.items() if p.startswith("/")}
        bad = {p: s for p, s in app.items() if s != (500 if p.startswith("/boom/") else 200)}
        problems += [f"[{run.name}] GET {p} answered {s}" for p, s in bad.items()]
        for group, cases in spec.groups.items():
            if group.startswith("boom."):
                continue
            for case in cases:
                got, expect = run.results.get(case["id"], {}), spec.expect[case["id"]]
                what = f"[{run.name}] {group} {case['sql']!r}"
                if expect == "error" and (not got.get("error") or case["canaries"][0] not in got["carried"]):
                    problems.append(f"{what}: expected an error quoting {case['canaries'][0]}, got {got}")
                elif expect == "ran" and not got.get("ran"):
                    problems.append(f"{what}: did not run: {got}")
                elif expect == "value" and (not got.get("ran") or got["returned"] != case["canaries"]):
                    problems.append(f"{what}: did not return its canaries: {got}")
    assert not problems, "\n".join(problems)


def test_every_output_was_produced(runs: list[Run], spec: Spec) -> None:
    """The scan looked at real data: each output exists and holds what the cases produce."""
    n_errors = sum(1 for e in spec.expect.values() if e == "error")
    for run in runs:
        scopes = {s["scope"].rsplit(".", 1)[-1] for s in run.spans}
        assert {"sqlalchemy", "psycopg", "psycopg2", "asyncpg", "sqlite3", "flask"} <= scopes, (run.name, scopes)
        failed = [s for s in run.spans if s["status"]["code"] == 2 and s["kind"] == "CLIENT"]
        assert len(failed) >= n_errors, (run.name, len(failed))
        assert any("exception.message" in e["attributes"] for s in failed for e in s["events"]), run.name
        bodies = [str(r["body"]) for r in run.logs]
        assert bodies.count("order lookup failed") == sum(len(v) for v in LOGGED.values()), (run.name, bodies)
        assert sum(b.startswith("Exception on /boom/") for b in bodies) == len(FLASK_FAILURES), (run.name, bodies)
        assert {p["name"] for p in run.metrics} >= {"db.client.operation.duration"}, run.name
        stack = [s for s in run.spans if "code.stacktrace" in s["attributes"] and "pg_sleep" in str(s["attributes"])]
        line = marker_line(APP_FILE.name, "stack")  # the line that carries the source canary issued it
        assert any(s["attributes"].get("code.line.number") == line for s in stack), f"[{run.name}] {stack}"
        details = [b["data"] for k, b in run.profiler.items() if re.fullmatch(r"query-details/\d+", k)]
        assert len(details) >= len(spec.expect), (run.name, len(details))
        assert any(d["stacktrace"] for d in details), run.name
        probes = {p.split()[1]: s for p, s in run.statuses.items() if p.startswith("profiler ")}
        assert probes == {**PROBES, "wrong_token": 401 if run.name == "all-slow" else 200}, (run.name, probes)
    slow = runs[1]
    assert "effective configuration" in slow.stderr, slow.stderr[-2000:]
    assert any(r["event_name"] == "dbperf.slow_query" for r in slow.logs)
    explained = [
        str(s["attributes"].get("db.query.text") or s["attributes"].get("db.statement"))
        for s in slow.spans
        if any(e["name"] == "dbperf.explain" for e in s["events"])
    ]
    missing = [
        case["sql"]
        for group, cases in spec.groups.items()
        if group.startswith("explain.")
        for case in cases
        if not any(re.search(rf"\bAS q{case['id'][1:]}\b", text) for text in explained)
    ]
    assert not missing, f"not explained: {missing}"
    assert any(b["data"]["plan"] for k, b in slow.profiler.items() if re.fullmatch(r"query-details/\d+", k))


def test_the_scanner_finds_whole_cut_and_numeric_canaries() -> None:
    spec = Spec({})
    a = spec.new("literal", "postgresql", "psycopg", "standard")
    b = spec.new("error", "postgresql", "psycopg", "int_literal")
    n = spec.new("literal", "sqlite", "sqlite3", "number", "int")
    scanner = Scanner(spec.canaries)
    assert scanner.find("nothing here, not even a canary") == []
    found = scanner.find(f"x = ?{a}? AND y = {n}")
    assert sorted((h[0].text, h[1]) for h in found if h[0]) == sorted([(a, True), (n, True)])
    (cut,) = scanner.find(f"LINE 1: ...id = '{b[:12]}")  # an excerpt that stops inside the canary
    assert cut[0] is not None and cut[0].text == b and cut[1] is False
    (cut,) = scanner.find(f"...{b[-14:]}' AND")  # an excerpt that starts inside it
    assert cut[0] is not None and cut[0].text == b and cut[1] is False
    # a cut too short to tell alone goes to the case that also shows whole in the same text, if any
    texts = {f"{PREFIX}_aaaa{i}_psycopg_{case}_bbbb_{SUFFIX}": (case, base)
             for i, (case, base) in enumerate([("x", "x"), ("y", "y"), ("y_C1", "y")])}  # fmt: skip
    tied = {t: Canary(t, "error", "", "psycopg", case, base) for t, (case, base) in texts.items()}
    y = next(t for t, k in tied.items() if k.case == "y")
    assert [h[0].base if h[0] else None for h in Scanner(tied).find(f"{y} ...{PREFIX}_aaaa")] == ["y", "y"]
    assert [h[0] for h in Scanner(tied).find(f"LINE 1: ...{PREFIX}_aaaa")] == [None]
