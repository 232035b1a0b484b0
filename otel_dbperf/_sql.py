"""Statement sanitizing, fingerprinting and summaries, by the lexical rules of each database.

``analyze(statement, max_length, dialect)`` tokenizes a statement the way its database
does (``dialect`` is the span's ``db.system.name`` / ``db.system``):

- PostgreSQL: ``'...'`` standard strings (a backslash is an ordinary character), ``E'...'``
  (backslash escapes), ``U&'...'``, ``B''``, ``X''``, ``N''``; dollar quotes ``$tag$...$tag$``
  with any tag (non-ASCII too) or none; nested ``/* /* */ */`` comments; ``--`` to the end of
  the line (``\\n`` or ``\\r``); ``"..."`` identifiers; ``$1`` parameters. A statement with a
  backslash in it is also read as under ``standard_conforming_strings = off`` (``'...'`` and
  ``N'...'`` with backslash escapes), and whatever either reading calls a literal is replaced.
- MySQL / MariaDB: ``'...'`` and ``"..."`` are both string literals (so a ``"..."`` is never
  shown, even under ``ANSI_QUOTES``), with backslash escapes; ``#`` and ``-- `` (dash dash
  space) comments; ``/* */`` not nested, ``/*! ... */`` and ``/*M! ... */`` whose text MySQL
  executes (their literals are literals); backtick identifiers. A statement with a backslash
  in it is also read as under ``NO_BACKSLASH_ESCAPES`` and, when it has a ``"``, as under
  ``ANSI_QUOTES`` (``"..."`` a name, no backslash escapes in it); whatever any reading calls a
  literal is replaced.
- SQLite: ``'...'`` (``''`` only), ``[...]`` and backtick identifiers. SQLite takes a ``"..."``
  as a string when no such column exists, so one is kept only where it can only be a name
  (after ``FROM``, ``JOIN``, ``INTO``, ``UPDATE``, ``TABLE``, ``INDEX``, ``VIEW``, ``TRIGGER``,
  ``AS``, or next to a ``.``); anywhere else it is a ``?``.
- SQL Server: ``[...]`` identifiers, nested comments, ``"..."`` replaced (they are strings
  under ``QUOTED_IDENTIFIER OFF``). Oracle: ``q'[...]'`` quoting, ``"..."`` identifiers.
- Anything else: the statement is read under every one of the rules above, and whatever
  any reading calls a literal (or a comment) is not shown.
- Redis (and Valkey): a command and its arguments, one command per line (a pipeline). The
  arguments are values (keys, members, scripts): only the command name stays (with its
  subcommand for container commands: ``CLIENT SETNAME``, ``CONFIG GET``), each argument a
  ``?``. Other key-value and document stores (memcached, mongodb, elasticsearch, ...): the
  first word when it is a plain name, then one ``?`` for all the rest.

Literals (strings, numbers, dollar quotes) become ``?``, comments are removed; keywords,
identifiers, operators and bind parameters stay. Every pattern ends at its closing delimiter
or at the end of the input (an unterminated literal runs to the end and is replaced), so
nothing backtracks and the scan is linear. The first ``_MAX_SCAN`` characters are analysed
(longer statements end in ``…``); an analysis that runs past ``_MAX_SCAN_SECONDS`` gives up
and fails closed: its text is the summary only (``INSERT orders …``). Nothing here raises on
any ``str``.

Analyses are cached: statements up to 4 KiB by value (2,048), longer ones by identity and
size (``_BIG_CACHE_ENTRIES``), so the processor, the metrics thread and the sinks that all
look at one big statement pay for one analysis.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from functools import lru_cache
from typing import NamedTuple

from . import _forksafe
from ._nosql import NOSQL_SYSTEMS

_MAX_SCAN = 16 * 1024  # characters of a statement that are looked at
_MAX_SCAN_SECONDS = 0.1  # past this an analysis fails closed (summary only)
_CACHE_MAX_LEN = 4096  # statements up to this are cached by value
_BIG_CACHE_ENTRIES = 256  # longer ones: this many analyses, keyed by hash and length
_SUMMARY_MAX = 255
_MAX_TABLES = 4

POSTGRESQL, MYSQL, SQLITE, MSSQL, ORACLE, OTHER = "postgresql", "mysql", "sqlite", "mssql", "oracle", "other"
REDIS, COMMANDS = "redis", "commands"  # not SQL: see _analyze_command
_SYSTEMS = {
    "postgresql": POSTGRESQL,
    "postgres": POSTGRESQL,
    "psycopg": POSTGRESQL,
    "psycopg2": POSTGRESQL,
    "mysql": MYSQL,
    "mariadb": MYSQL,
    "sqlite": SQLITE,
    "sqlite3": SQLITE,
    "mssql": MSSQL,
    "microsoft.sql_server": MSSQL,
    "sqlserver": MSSQL,
    "oracle": ORACLE,
    "oracle.db": ORACLE,
    "redis": REDIS,
    "valkey": REDIS,
    **{name: COMMANDS for name in NOSQL_SYSTEMS if name not in ("redis", "valkey")},  # the other stores
}


def dialect_of(system: object) -> str:
    """The lexical family of a ``db.system.name`` / ``db.system`` / SQLAlchemy dialect name."""
    if isinstance(system, str):
        found = _SYSTEMS.get(system)
        return found if found is not None else _SYSTEMS.get(system.lower(), OTHER)
    return OTHER


# --- lexers ------------------------------------------------------------------------------------

# Token kinds: C comment, S literal, I quoted identifier, P bind parameter, N number, W word,
# _ space, O any other character.
# Identifiers: ASCII letters, digits, "_" ("$" after the first character) and every code point from
# U+0080 up, spelled as the complement of the ASCII characters they leave out: the same classes, but
# re's compiler walks a range up to U+10FFFF code point by code point (~5 ms per lexer at first use)
_ID_START = r"[^\x00-\x40\x5b-\x5e\x60\x7b-\x7f]"  # A-Za-z_ and U+0080..U+10FFFF
_ID_CONT = r"[^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"  # A-Za-z0-9_$ and U+0080..
_ID_CONT_NO_DOLLAR = r"[^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"  # A-Za-z0-9_ and U+0080..
_SPACE = r"[ \t\n\r\f\v]+"
_NUMBER = (
    r"0[xX][0-9A-Fa-f_]+|0[bB][01_]+|0[oO][0-7_]+"
    r"|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?"
)
_WORD = rf"{_ID_START}{_ID_CONT}*"
_STD_STRING = r"'(?:[^']|'')*(?:'|\Z)"
_BS_STRING = r"'(?:[^'\\]|''|\\(?s:.)?)*(?:'|\Z)"
_PREFIX = "[NnXxBb]?"  # N'national', X'hex', B'bits': one literal with its quotes
_DQ = r'"(?:[^"]|"")*(?:"|\Z)'
_BACKTICK = r"`(?:[^`]|``)*(?:`|\Z)"
_DRIVER_PARAMS = r"%s|%\([^()\s'\"`]{1,64}\)s|(?<![:\w]):[A-Za-z_][A-Za-z0-9_]*"
_COMMENT_DELIM = re.compile(r"/\*|\*/")


class _Lexer:
    """One dialect's reading rules. Its pattern is compiled when first used (the identifier classes
    span all of Unicode: compiling the ten of them took ~60 ms of every process's start-up, most
    for dialects the process never meets)."""

    __slots__ = ("_pattern", "_source", "dq", "exec_comments", "name", "nested_comments")

    def __init__(self, name: str, source: str, nested_comments: bool, dq: str, exec_comments: bool) -> None:
        self.name = name
        self._source = source
        self._pattern: re.Pattern[str] | None = None
        self.nested_comments = nested_comments
        self.dq = dq  # what a "..." is: "I" identifier, "S" literal, "sqlite" (depends on where)
        self.exec_comments = exec_comments  # MySQL /*! ... */

    @property
    def pattern(self) -> re.Pattern[str]:
        pattern = self._pattern
        if pattern is None:  # two threads may both compile it: the same pattern either way
            pattern = self._pattern = re.compile(self._source)
        return pattern


_LEXERS: list[_Lexer] = []


def compiled_lexers() -> list[str]:
    """The names of the lexers this process has compiled (the dialects it met)."""
    return [lexer.name for lexer in _LEXERS if lexer._pattern is not None]


def _lexer(name: str, nested: bool, dq: str, exec_comments: bool, *parts: tuple[str, str]) -> _Lexer:
    pattern = "|".join(f"(?P<{group}>{regex})" for group, regex in parts)
    lexer = _Lexer(name, pattern, nested, dq, exec_comments)
    _LEXERS.append(lexer)
    return lexer


def _common(eol: str) -> tuple[tuple[str, str], ...]:
    return (("lc", f"--[^{eol}]*"), ("bc", r"/\*"))


def _tail(word: str = _WORD) -> tuple[tuple[str, str], ...]:
    return (("N", _NUMBER), ("W", word), ("_", _SPACE), ("O", r"(?s:.)"))


def _pg(name: str, strings: str) -> _Lexer:
    return _lexer(
        name,
        True,
        "I",
        False,
        *_common(r"\n\r"),
        ("dol", rf"\$(?:{_ID_START}{_ID_CONT_NO_DOLLAR}*)?\$"),
        ("S", strings),
        ("dq", rf"(?:[Uu]&)?{_DQ}"),
        ("P", rf"\$\d+|\?|{_DRIVER_PARAMS}"),
        *_tail(),
    )


_PG = _pg(POSTGRESQL, rf"[Ee]{_BS_STRING}|(?:[NnBbXx]|[Uu]&)?{_STD_STRING}")
# standard_conforming_strings = off: '...' and N'...' take backslash escapes as E'...' does (U&'...'
# is refused by the server there: read as the longer of the two); B'' and X'' hold digits only.
_PG_NONSTANDARD = _pg("postgresql_nonstandard_strings", rf"(?:[EeNn]|[Uu]&)?{_BS_STRING}|[BbXx]{_STD_STRING}")


def _mysql(name: str, backslash: bool, ansi_quotes: bool = False) -> _Lexer:
    string = _BS_STRING if backslash else _STD_STRING
    # a "..." is a literal, read with the string's rules; under ANSI_QUOTES a name, where a
    # backslash is an ordinary character (still shown as ? like every "...")
    dq = (_STD_STRING if ansi_quotes else string).replace("'", '"')
    return _lexer(
        name,
        False,
        "S",
        True,
        ("lc", r"(?:\#|--(?=[\x00-\x20]|\Z))[^\n]*"),
        ("bc", r"/\*"),
        ("S", f"{_PREFIX}{string}|{dq}"),
        ("I", _BACKTICK),
        ("P", rf"\?|{_DRIVER_PARAMS}"),
        *_tail(rf"@@?[A-Za-z0-9_$.]+|{_WORD}"),
    )


_MYSQL = _mysql(MYSQL, True)
_MYSQL_NO_BACKSLASH = _mysql("mysql_no_backslash_escapes", False)
_MYSQL_ANSI_QUOTES = _mysql("mysql_ansi_quotes", True, True)  # with NO_BACKSLASH_ESCAPES: read as the one above
_SQLITE = _lexer(
    SQLITE,
    False,
    "sqlite",
    False,
    *_common(r"\n"),
    ("S", _PREFIX + _STD_STRING),
    ("dq", _DQ),
    ("I", rf"{_BACKTICK}|\[[^\]]*(?:\]|\Z)"),
    ("P", rf"\?\d*|[:@$][A-Za-z0-9_]+|{_DRIVER_PARAMS}"),
    *_tail(),
)


def _mssql(name: str, eol: str) -> _Lexer:
    return _lexer(
        name,
        True,
        "S",
        False,
        *_common(eol),
        ("S", _PREFIX + _STD_STRING),
        ("dq", _DQ),
        ("I", r"\[(?:[^\]]|\]\])*(?:\]|\Z)"),
        ("P", rf"@[A-Za-z0-9_@#$]+|\?|{_DRIVER_PARAMS}"),
        *_tail(),
    )


def _oracle(name: str, eol: str) -> _Lexer:
    return _lexer(
        name,
        False,
        "I",
        False,
        *_common(eol),
        ("qq", r"[Nn]?[Qq]'[^ \t\n\r]"),
        ("S", _PREFIX + _STD_STRING),
        ("dq", _DQ),
        ("P", rf":\d+|\?|{_DRIVER_PARAMS}"),
        *_tail(),
    )


_MSSQL, _MSSQL_CR = _mssql(MSSQL, r"\n"), _mssql("mssql_cr", r"\n\r")
_ORACLE, _ORACLE_CR = _oracle(ORACLE, r"\n"), _oracle("oracle_cr", r"\n\r")
_Q_CLOSE = {"(": ")", "[": "]", "{": "}", "<": ">"}
# SQLite: a "..." right after one of these (or next to a ".") can only be a name
_SQLITE_NAME_BEFORE = frozenset({"from", "join", "into", "update", "table", "index", "view", "trigger", "as", "."})
_DOT_AHEAD = re.compile(r"[ \t\n\r\f\v]*\.")
# Characters whose meaning differs between the dialects: without any, every reading agrees.
_AMBIGUOUS = re.compile(r"[\"\\#$\[`\r]|/\*|--|[qQ]'")

Token = tuple[str, int, int]


class _Budget(Exception):
    """The analysis ran past its time budget."""


def _lex(text: str, lexer: _Lexer, deadline: float) -> list[Token]:
    """(kind, start, end) of every token of ``text`` under ``lexer``'s rules."""
    match = lexer.pattern.match
    end_of_text = len(text)
    tokens: list[Token] = []
    append = tokens.append
    pos = 0
    in_exec = False  # inside MySQL's /*! ... */
    while pos < end_of_text:
        m = match(text, pos)
        if m is None:  # cannot happen: the last alternative takes any character
            append(("S", pos, end_of_text))
            break
        kind = m.lastgroup
        end = m.end()
        if kind in _PLAIN:
            if kind == "O" and in_exec and text.startswith("*/", pos):
                kind, end, in_exec = "C", pos + 2, False
            append((kind, pos, end))  # type: ignore[arg-type]
            pos = end
            if not len(tokens) & 1023 and time.perf_counter() > deadline:
                raise _Budget
            continue
        if kind == "lc":
            kind = "C"
        elif kind == "bc":
            kind, end = _block_comment(text, pos, lexer)
            if kind == "X":  # MySQL executable comment: its opener only; the text is code
                in_exec = True
                kind = "C"
        elif kind == "dol":
            close = text.find(m.group(), end)
            kind, end = "S", end_of_text if close < 0 else close + end - pos
        elif kind == "qq":
            delim = text[end - 1]
            close = text.find(_Q_CLOSE.get(delim, delim) + "'", end)
            kind, end = "S", end_of_text if close < 0 else close + 2
        elif kind == "dq":
            if not _closed(text, pos + 2 if text[pos] != '"' else pos, end, '"'):
                kind = "S"  # unterminated: the rest of the statement, never shown
            elif lexer.dq == "sqlite":
                kind = "I" if _sqlite_name_position(text, tokens, end) else "S"
            else:
                kind = lexer.dq
        elif kind == "I" and not _closed(text, pos, end, "]" if text[pos] == "[" else "`"):
            kind = "S"  # unterminated quoted name: the rest of the statement, never shown
        append((kind, pos, end))  # type: ignore[arg-type]
        pos = end
        if not len(tokens) & 255 and time.perf_counter() > deadline:
            raise _Budget
    return tokens


_PLAIN = frozenset({"W", "_", "O", "N", "P", "S"})


def _sqlite_name_position(text: str, tokens: list[Token], end: int) -> bool:
    """Whether a "..." ending at ``end`` can only be a name (SQLite would not take it as a string)."""
    if _DOT_AHEAD.match(text, end):
        return True
    for kind, start, stop in reversed(tokens):
        if kind != "_" and kind != "C":
            return text[start:stop].lower() in _SQLITE_NAME_BEFORE
    return False


def _closed(text: str, opener: int, end: int, quote: str) -> bool:
    """Whether the quoted name from ``opener`` to ``end`` has its closing quote (doubled ones escape)."""
    i = end - 1
    while i > opener and text[i] == quote:
        i -= 1
    return (end - 1 - i) % 2 == 1


def _block_comment(text: str, pos: int, lexer: _Lexer) -> tuple[str, int]:
    """("C", end) of the comment at ``pos``; ("X", end of its opener) for MySQL's /*! and /*M!."""
    if lexer.exec_comments:
        m = _EXEC_OPENER.match(text, pos)
        if m is not None:
            return "X", m.end()
    if not lexer.nested_comments:
        close = text.find("*/", pos + 2)
        return "C", len(text) if close < 0 else close + 2
    depth = 1
    for m in _COMMENT_DELIM.finditer(text, pos + 2):
        depth += 1 if m.group() == "/*" else -1
        if depth == 0:
            return "C", m.end()
    return "C", len(text)


_EXEC_OPENER = re.compile(r"/\*M?!\d*")


def _readings(text: str, dialect: str) -> tuple[_Lexer, ...]:
    """The lexers ``text`` is read with: the first gives the tokens, all of them the literals."""
    if dialect == POSTGRESQL:
        return (_PG, _PG_NONSTANDARD) if "\\" in text else (_PG,)
    if dialect == MYSQL:
        if "\\" not in text:
            return (_MYSQL,)
        return (_MYSQL, _MYSQL_NO_BACKSLASH, _MYSQL_ANSI_QUOTES) if '"' in text else (_MYSQL, _MYSQL_NO_BACKSLASH)
    if dialect == SQLITE:
        return (_SQLITE,)
    if dialect == MSSQL:
        return (_MSSQL, _MSSQL_CR) if "\r" in text else (_MSSQL,)
    if dialect == ORACLE:
        return (_ORACLE, _ORACLE_CR) if "\r" in text else (_ORACLE,)
    if not _AMBIGUOUS.search(text):
        return (_PG,)
    readings = [_PG, _MYSQL, _SQLITE, _MSSQL, _ORACLE]
    if "\\" in text:
        readings += (_PG_NONSTANDARD, _MYSQL_NO_BACKSLASH)
        if '"' in text:
            readings.append(_MYSQL_ANSI_QUOTES)
    if "\r" in text:
        readings += (_MSSQL_CR, _ORACLE_CR)
    return tuple(readings)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    ranges.sort()
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if out and start < out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _levels(tokens: list[Token], others: list[list[Token]]) -> list[int]:
    """Per token: 2 when any reading has a literal in it, 1 a comment, else 0."""
    literal: list[tuple[int, int]] = []
    comment: list[tuple[int, int]] = []
    for reading in (tokens, *others):
        for kind, start, end in reading:
            if kind == "S":
                literal.append((start, end))
            elif kind == "C":
                comment.append((start, end))
    levels = [0] * len(tokens)
    for level, ranges in ((1, _merged(comment)), (2, _merged(literal))):
        i = 0
        for t, (_, start, end) in enumerate(tokens):
            while i < len(ranges) and ranges[i][1] <= start:
                i += 1
            if i < len(ranges) and ranges[i][0] < end:
                levels[t] = level
    return levels


# --- analysis ----------------------------------------------------------------------------------

_PLAIN_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
# After normalization: a parenthesised list of placeholders, and a run of such lists.
_PLACEHOLDER_LIST = re.compile(r"\( ?\?(?: ?, ?\?)* ?\)")
_LIST_RUN = re.compile(r"\(\?\)(?: ?, ?\(\?\))+")

OPERATIONS = frozenset(
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
        "table",
        "start",
        "end",
        "declare",
        "fetch",
        "close",
        "prepare",
        "deallocate",
        "listen",
        "notify",
        "do",
        "use",
        "describe",
        "desc",
        "load",
        "handler",
        "reindex",
        "cluster",
        "comment",
        "discard",
        "reset",
        "refresh",
        "attach",
        "detach",
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
    if token[:1] in '"`[' and len(token) >= 2:
        return token[1:-1]
    if token[:2] in ("U&", "u&") and len(token) >= 4:
        return token[3:-1]
    return token


def _analyze(statement: str, max_length: int, dialect: str) -> Analysis:
    if dialect is REDIS or dialect is COMMANDS:
        return _analyze_command(statement, max_length, dialect)
    deadline = time.perf_counter() + _MAX_SCAN_SECONDS
    try:
        return _analyze_text(statement, max_length, dialect, deadline)
    except _Budget:
        return _summary_only(statement, dialect)
    except RecursionError:  # cannot happen (nothing recurses); fail closed all the same
        return _summary_only(statement, dialect)


_COMMAND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.|-]{0,63}\Z")
_REDIS_CONTAINERS = frozenset(
    {
        "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY", "MODULE",
        "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
    }
)  # fmt: skip
_MAX_COMMANDS = 64  # commands of a pipeline shown; the rest is "…"


def _analyze_command(statement: str, max_length: int, dialect: str) -> Analysis:
    """A key-value or document store's command: the command name stays, its arguments (values) go.

    Redis: one command per line (contrib's pipelines), ``GET ?``, ``CONFIG GET ?``, ``MGET ? ? ?``;
    elsewhere the first word and one ``?`` for the rest. The fingerprint is of the sanitized text;
    the operation is the first command (upper case), the summary the command names."""
    out: list[str] = []
    names: list[str] = []
    lines = statement[:_MAX_SCAN].splitlines() if dialect is REDIS else [statement[:_MAX_SCAN]]
    for line in lines[:_MAX_COMMANDS]:
        words = line.split()
        if not words:
            continue
        name = words[0] if _COMMAND_NAME.match(words[0]) else "?"
        rest = words[1:]
        if dialect is REDIS:
            name = name.upper()
            if name in _REDIS_CONTAINERS and rest and _COMMAND_NAME.match(rest[0]):
                name = f"{name} {rest[0].upper()}"
                rest = rest[1:]
            out.append(" ".join([name, *("?" * len(rest))]) if rest else name)
        else:
            out.append(f"{name} ?" if rest else name)
        if name != "?" and name not in names:
            names.append(name)
    if len(lines) > _MAX_COMMANDS:
        out.append("\u2026")
    sanitized = "\n".join(out)
    if len(sanitized) > max_length:
        sanitized = sanitized[: max_length - 1].rstrip() + "\u2026"
    fingerprint = hashlib.blake2b(f"{dialect}\x00{sanitized}".encode("utf-8", "surrogatepass"), digest_size=8)
    operation = names[0].upper() if names else ""
    summary = " ".join(names[:_MAX_TABLES])[:_SUMMARY_MAX]
    return Analysis(sanitized, fingerprint.hexdigest(), summary, operation, "")


def _summary_only(statement: str, dialect: str) -> Analysis:
    """Fail closed: the operation and tables of the statement's beginning, no statement text."""
    head = _analyze_text(statement[:1024], 1024, dialect, float("inf"))
    text = f"{head.summary} \u2026" if head.summary else "\u2026"
    key = f"budget\x00{dialect}\x00{head.summary}\x00{len(statement)}"
    fingerprint = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return Analysis(text, fingerprint, head.summary, head.operation, head.table)


def _analyze_text(statement: str, max_length: int, dialect: str, deadline: float) -> Analysis:
    text = statement[:_MAX_SCAN]
    readings = _readings(text, dialect)
    tokens = _lex(text, readings[0], deadline)
    levels = _levels(tokens, [_lex(text, r, deadline) for r in readings[1:]]) if len(readings) > 1 else None
    out: list[str] = []  # sanitized pieces
    norm: list[str] = []  # normalized pieces (fingerprint)
    operation = ""
    tables: list[str] = []
    expect_table = False
    just_table = False  # the previous token was a table name (a "." may qualify it)
    depth = 0
    hidden = 0  # inside a run of hidden tokens: 1 comment only so far, 2 a literal in it
    for t, (kind, start, end) in enumerate(tokens):
        level = 2 if kind == "S" else 1 if kind == "C" else 0
        if kind == "I" and not _PLAIN_IDENT.match(_identifier(text[start:end])):
            level = 2  # a name that does not look like one ("bob@example.com"): shown as ?
        if levels is not None and levels[t] > level:
            level = levels[t]
        if level:
            if level == 2 and hidden < 2:
                out.append("?")
                norm.append("?")
                expect_table = just_table = False
            elif hidden == 0 and out and out[-1] != " ":
                out.append(" ")
                norm.append(" ")
            hidden = max(hidden, level)
            continue
        hidden = 0
        was_table, just_table = just_table, False
        if kind == "_":
            if out and out[-1] != " ":
                out.append(" ")
                norm.append(" ")
            continue
        tok = text[start:end]
        if kind == "W":
            low = tok.lower()
            out.append(tok)
            norm.append(low)
            if not operation and low in OPERATIONS or operation == "with" and depth == 0 and low in _MAIN_OPS:
                operation = low
            if expect_table:
                if low in _SKIP_AFTER_TABLE_KW:
                    continue
                expect_table = False
                if low not in OPERATIONS and tok not in tables:
                    tables.append(tok)
                    just_table = True
            elif low in _TABLE_BEFORE:
                expect_table = True
            continue
        if kind == "I":
            inner = _identifier(tok)
            out.append(tok)
            norm.append(inner.lower())
            if expect_table:
                expect_table = False
                if inner and inner not in tables:
                    tables.append(inner)
                    just_table = True
            continue
        if kind == "N" or kind == "P":
            out.append("?" if kind == "N" else tok)
            norm.append("?")
            expect_table = False
            continue
        # O: punctuation
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
_big: OrderedDict[tuple[int, int, int, str], tuple[str, str, Analysis]] = OrderedDict()
_big_lock = _forksafe.lock("sql.big_statements")


def analyze(statement: str, max_length: int = 4096, dialect: object = OTHER) -> Analysis:
    """Sanitized text, 16-hex fingerprint, ``db.query.summary``, operation, first table.

    ``dialect``: the span's ``db.system.name`` (or ``db.system``, or a SQLAlchemy dialect
    name); unknown or missing reads the statement under every dialect's rules.
    """
    family = dialect_of(dialect)
    if len(statement) <= _CACHE_MAX_LEN:
        return _cached(statement, max_length, family)
    # One analysis per big statement: the record, the metrics thread and the sinks hold the
    # same str object, whose hash is computed once; the ends confirm a hit cheaply.
    key = (hash(statement), len(statement), max_length, family)
    head, tail = statement[:64], statement[-64:]
    with _big_lock:
        hit = _big.get(key)
        if hit is not None and hit[0] == head and hit[1] == tail:
            _big.move_to_end(key)
            return hit[2]
    analysis = _analyze(statement, max_length, family)
    with _big_lock:
        _big[key] = (head, tail, analysis)
        if len(_big) > _BIG_CACHE_ENTRIES:
            _big.popitem(last=False)
    return analysis


def code_tokens(statement: str, dialect: object = OTHER) -> list[list[tuple[str, str]]] | None:
    """``statement`` as read by each of ``dialect``'s readings (one, or several when unsure).

    Per reading, its tokens as (kind, text) without spaces: ``W`` word, ``I`` quoted name, ``P``
    bind parameter, ``N`` number, ``S`` literal, ``C`` comment, ``O`` any other character. None
    when the statement is longer than ``_MAX_SCAN`` or its reading ran out of time.
    """
    if len(statement) > _MAX_SCAN:
        return None
    deadline = time.perf_counter() + _MAX_SCAN_SECONDS
    try:
        readings = [_lex(statement, lexer, deadline) for lexer in _readings(statement, dialect_of(dialect))]
    except _Budget:
        return None
    return [[(kind, statement[start:end]) for kind, start, end in tokens if kind != "_"] for tokens in readings]
