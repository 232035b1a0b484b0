"""Statement sanitizing, fingerprinting and summaries.

A single linear tokenizer: every alternative of ``_TOKEN`` can only end at its
closing delimiter or at the end of the input, so no input backtracks
catastrophically, and the scan is capped at ``_MAX_SCAN`` characters. Nothing
here raises on any ``str``.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import NamedTuple

_MAX_SCAN = 64 * 1024  # characters of a statement that are looked at
_CACHE_MAX_LEN = 4096  # longer statements are analysed each time (bounded cache memory)
_SUMMARY_MAX = 255
_MAX_TABLES = 4

_TOKEN = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*(?:[^*]|\*(?!/))*(?:\*/|\Z))
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$(?s:.)*?(?:\$(?P=tag)\$|\Z))
    | (?P<string>(?:[EeNnBbXx]|[Uu]&)?'(?:[^'\\]|''|\\(?s:.)?)*(?:'|\Z))
    | (?P<quoted>"(?:[^"]|"")*(?:"|\Z)|`(?:[^`]|``)*(?:`|\Z))
    | (?P<param>\?|%s|%\([^()\s]{1,64}\)s|(?<!:):[A-Za-z_]\w*|\$\d+)
    | (?P<number>(?:0[xX][0-9A-Fa-f]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?))
    | (?P<word>[^\W\d]\w*(?:\$\w*)*)
    | (?P<space>\s+)
    | (?P<other>(?s:.))
    """,
    re.VERBOSE,
)

_PLAIN_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
# After normalization: a parenthesised list of placeholders, and a run of such lists.
_PLACEHOLDER_LIST = re.compile(r"\( ?\?(?: ?, ?\?)* ?\)")
_LIST_RUN = re.compile(r"\(\?\)(?: ?, ?\(\?\))+")

_OPERATIONS = frozenset(
    [
        "select",
        "insert",
        "update",
        "delete",
        "merge",
        "upsert",
        "replace",
        "create",
        "drop",
        "alter",
        "truncate",
        "begin",
        "commit",
        "rollback",
        "savepoint",
        "release",
        "set",
        "show",
        "explain",
        "call",
        "exec",
        "execute",
        "pragma",
        "vacuum",
        "analyze",
        "copy",
        "grant",
        "revoke",
        "lock",
        "with",
        "values",
    ]
)
_MAIN_OPS = frozenset({"select", "insert", "update", "delete", "merge"})
_TABLE_BEFORE = frozenset({"from", "join", "into", "update", "table"})
_SKIP_AFTER_TABLE_KW = frozenset({"only", "lateral", "if", "not", "exists", "ignore"})


class Analysis(NamedTuple):
    sanitized: str
    fingerprint: str
    summary: str
    operation: str
    table: str


def _identifier(token: str) -> str:
    if token[:1] in '"`' and len(token) >= 2:
        return token[1:-1]
    return token


def _analyze(statement: str, max_length: int) -> Analysis:
    text = statement[:_MAX_SCAN]
    out: list[str] = []  # sanitized pieces
    norm: list[str] = []  # normalized pieces (fingerprint)
    operation = ""
    tables: list[str] = []
    expect_table = False
    just_table = False  # the previous token was a table name (a "." may qualify it)
    depth = 0
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        tok = m.group()
        was_table, just_table = just_table, False
        if kind == "space":
            if out and out[-1] != " ":
                out.append(" ")
                norm.append(" ")
            continue
        if kind == "comment":
            continue
        if kind == "word":
            low = tok.lower()
            out.append(tok)
            norm.append(low)
            if not operation and low in _OPERATIONS or operation == "with" and depth == 0 and low in _MAIN_OPS:
                operation = low
            if expect_table:
                if low in _SKIP_AFTER_TABLE_KW:
                    continue
                expect_table = False
                if low not in _OPERATIONS and tok not in tables:
                    tables.append(tok)
                    just_table = True
            elif low in _TABLE_BEFORE:
                expect_table = True
            continue
        if kind == "quoted":
            inner = _identifier(tok)
            if _PLAIN_IDENT.match(inner):
                out.append(tok)
                norm.append(inner.lower())
                if expect_table:
                    expect_table = False
                    if inner not in tables:
                        tables.append(inner)
                        just_table = True
            else:  # MySQL reads "..." as a string literal: never show it
                out.append("?")
                norm.append("?")
                expect_table = False
            continue
        if kind in ("string", "dollar", "number", "param"):
            out.append(tok if kind == "param" else "?")
            norm.append("?")
            expect_table = False
            continue
        # other: punctuation
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth = max(0, depth - 1)
        if tok == "." and was_table:
            # schema-qualified name: "schema.table" -> the table is the next name
            expect_table = True
            tables.pop()
        else:
            expect_table = False
        out.append(tok)
        norm.append(tok)

    truncated = len(statement) > _MAX_SCAN
    sanitized = "".join(out).strip()
    if len(sanitized) > max_length or truncated:
        sanitized = sanitized[: max_length - 1].rstrip() + "\u2026"
    normalized = "".join(norm).strip()
    normalized = _LIST_RUN.sub("(?)", _PLACEHOLDER_LIST.sub("(?)", normalized))
    if truncated:
        normalized += f" \u2026{len(statement)}"
    fingerprint = hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    op = operation.upper()
    summary = " ".join([op, *tables[:_MAX_TABLES]]).strip()[:_SUMMARY_MAX] if op else ""
    return Analysis(sanitized, fingerprint, summary, op, tables[0] if tables else "")


_cached = lru_cache(maxsize=2048)(_analyze)


def analyze(statement: str, max_length: int = 4096) -> Analysis:
    """Sanitized text, 16-hex fingerprint, ``db.query.summary``, operation, first table."""
    if len(statement) <= _CACHE_MAX_LEN:
        return _cached(statement, max_length)
    return _analyze(statement, max_length)
