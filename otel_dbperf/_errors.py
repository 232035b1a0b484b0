"""Database error texts, scrubbed by structure.

Drivers quote the values they could not use ("invalid input syntax for type
integer: "VALUE"", "Incorrect integer value: 'VALUE'", asyncpg's "invalid input
for query argument $1: 'VALUE'") and excerpts of the statement ("LINE 1: ...",
MySQL's "near '...' at line 1"). Messages are too many to list, so the scrubber
does not know messages, it knows their *structure*:

* **Anything quoted is a value** (``'...'``, ``"..."``, ```...```), and is
  replaced by ``?`` inside its quotes. Because a value may itself contain the
  quote character (PostgreSQL does not escape it), a value runs to the *last*
  such quote of its block (a block is a message line with its continuation
  lines, up to the next ``DETAIL:``/``HINT:``/``CONTEXT:``/``LINE n:`` line),
  or to the end of the block when it is never closed.
* A quoted text stays only when it is **proven to be a name**: it is shaped
  like an identifier (``users``, ``public.users``, ```db`.`t`.`c```) and either
  every part of it appears as a word in the *sanitized* statement that caused
  the error (SQLAlchemy's ``[SQL: ...]`` block, PostgreSQL's ``LINE 1:`` excerpt,
  or the span's statement) -- so it tells nothing the exported statement does
  not -- or it names a catalog object the server checked: the text right after
  ``constraint``, ``index``, ``in column``/``for column``, ``of relation``/
  ``for relation`` or ``for key``. So ``relation "users" does not exist`` keeps
  ``users`` after ``SELECT * FROM users``, and ``relation "?" does not exist``
  is what ``'SECRET'::regclass`` gives.
* **Statement excerpts are statements**: ``LINE 1:`` (when PostgreSQL did not
  cut its start), ``QUERY:``/``STATEMENT:``, and the offending token of
  ``at or near "..."`` / ``near "...": syntax error`` / ``near '...' at line N``
  / ``unrecognized token: "..."`` go through the statement sanitizer.
  Excerpts quoted in a message, and SQLAlchemy's ``[SQL: ...]`` of a MySQL or SQLite
  driver, also lose their double-quoted text (a string there, or possibly one). An
  excerpt cut at its start (``LINE 1: ...x = 'a``) or a later line of the
  statement (``LINE 2:``) may begin inside a literal, where no tokenizer can
  tell values from code: it is removed. A cut end is harmless (an unclosed
  literal runs to the end of the excerpt and becomes ``?``). Caret lines go.
* **Structured values**: the parenthesised values of ``Key (cols)=(values)``
  (and any ``(...) = (...)``), ``contains (...)`` (failing rows, partition keys),
  the text after ``line N:`` in a ``CONTEXT`` (JSON data), asyncpg's ``query
  argument $N: ...`` (its value is an unquoted, truncated ``repr``) and
  SQLAlchemy's ``[parameters: ...]`` are dropped; ``[SQL: ...]`` is sanitized.

* **Client annotations**: redis-py's ``Command # N (CMD args...) of pipeline caused error:``
  keeps the command's name only (its arguments are keys and values).

Free text that is not quoted and not an excerpt is kept. A text the application wrote itself
(PL/pgSQL's ``RAISE``, MariaDB's ``SIGNAL``, a Redis script's error, a relayed remote error: see
:func:`otel_dbperf._error_kind.app_error`) is all values as far as anyone can tell: it is
replaced by :func:`opaque_error_text`, which keeps the code, the class names and SQLAlchemy's
sanitized ``[SQL: ...]`` block only.

Python tracebacks (``exception.stacktrace``) are scrubbed by
:func:`scrub_traceback`: frame lines stay, their source lines go (a literal written in the code
would go with them; ``DBPERF_STACKTRACE_SOURCE=true`` keeps them, as for ``code.stacktrace``),
and the exception messages between them go through :func:`scrub_error_text` (or
:func:`opaque_error_text`). Everything is linear in the text, bounded to ``_MAX_TEXT``
characters, and never raises: an internal error gives a fixed text (fail closed).
"""

from __future__ import annotations

import re
from typing import Any

from ._guard import internal_error
from ._sql import analyze

_MAX_TEXT = 64 * 1024  # characters of an error text that are kept and looked at
_MAX_BLOCKS = 16  # SQLAlchemy writes one [SQL: ...] and one [parameters: ...] block per message
_MAX_NAMES = 1024  # identifiers remembered from the statements of one error text
REMOVED = "[error text removed by otel-dbperf]"
APP_REMOVED = "[application-raised error text removed by otel-dbperf]"
_EXCERPT_REMOVED = "(excerpt removed: it may begin inside a literal)"

_BACKGROUND = "\n(Background on this error"
# A line that starts a new block of a PostgreSQL error (libpq prints the fields on their own lines).
_LABEL = re.compile(r"(?:LINE \d+|DETAIL|HINT|CONTEXT|QUERY|STATEMENT|WHERE|LOCATION):", re.ASCII)
_LINE_EXCERPT = re.compile(r"LINE (\d+):[ \t]?(.*)", re.ASCII | re.DOTALL)
_STATEMENT_EXCERPT = re.compile(r"(?:QUERY|STATEMENT):[ \t]*(.*)", re.ASCII | re.DOTALL)
_CARET = re.compile(r"[ \t]*\^[ \t]*\Z")
_WORD = re.compile(r"[^\W\d][\w$]*")
_PART = r"[^\W\d][\w$]{0,127}"
# A quoted name: one quoted identifier-shaped part, or a dotted chain of them.
_NAME = re.compile(
    rf"""(?:"{_PART}"|'{_PART}'|`{_PART}`)(?:\.(?:"{_PART}"|`{_PART}`))*"""
    rf"""|(?P<q>["'`]){_PART}(?:\.{_PART}){{1,3}}(?P=q)"""
)
_CATALOG_NOUN = re.compile(r"(?:\bconstraint|\bindex|\b(?:in|for) column|\b(?:of|for) relation|\bfor key) \Z", re.I)
# Values that are not quoted: asyncpg's repr of a bound argument, JSON excerpts, row values.
_ARGUMENT = re.compile(r"query argument \$\d+(?: in element #\d+ of executemany\(\) sequence)?: ")
_DATA_LINE = re.compile(r"\bline \d+: ")
_ROW_VALUES = re.compile(r"\)[ \t]?=[ \t]?\(|\bcontains \(")
# redis-py: "Command # 2 (HSET key field value) of pipeline caused error: ...": the command's name stays
_PIPELINE_COMMAND = re.compile(r"\bCommand # \d+ \([^\s)]*")
_PIPELINE_CLOSE = ") of pipeline caused error: "
# Quoted statement excerpts: the text before the opening quote, and the closing (the last one of the block).
_EXCERPTS = (
    ('at or near "', re.compile(r'"')),  # PostgreSQL: the offending token
    ('unrecognized token: "', re.compile(r'"')),  # SQLite: the offending token
    ('near "', re.compile(r'": syntax error')),  # SQLite: the offending token
    ("near '", re.compile(r"' at line \d+")),  # MySQL / MariaDB: the statement from the offending token on
)
# Drivers of databases where "..." may be a string literal (MySQL/MariaDB by default, SQLite as a fallback).
_DQ_STRING_DRIVERS = re.compile(r"\((?:pymysql|MySQLdb|mysql|aiomysql|asyncmy|sqlite3|aiosqlite)[\w.]*\) ")
_DOUBLE_QUOTED = re.compile(r'"(?:[^"]|"")*"?')
_MYSQL_ARGS = re.compile(
    r"\A(?:\([\w.]+\) )?\((\d{4}), ([\"'])"
)  # pymysql: str(exc) is the args tuple (code, "message")


def scrub_error_text(text: str, statement: str | None = None) -> str:
    """``text`` (an error message) without the values it quotes; ``statement`` proves names."""
    try:
        return _scrub(text, statement)
    except Exception as exc:  # noqa: BLE001 - fail closed
        internal_error("scrub_error_text", exc)
        return REMOVED


def scrub_traceback(text: str, statement: str | None = None, source: bool = False, app: Any = None) -> str:
    """A formatted Python traceback with its exception messages scrubbed; frame lines kept, their
    source lines only with ``source``. ``app`` (an :class:`~otel_dbperf._error_kind.AppError`):
    the messages are the application's own text, replaced by :func:`opaque_error_text`."""
    try:
        return _scrub_traceback(text, statement, source, app, True)
    except Exception as exc:  # noqa: BLE001 - fail closed
        internal_error("scrub_traceback", exc)
        return REMOVED


def without_source_lines(text: str) -> str:
    """A formatted Python traceback (or a text holding one) without its frames' source lines; its
    messages as they are (an exception that is no database error keeps its text)."""
    try:
        return _scrub_traceback(text, None, False, None, False)
    except Exception as exc:  # noqa: BLE001 - fail closed
        internal_error("without_source_lines", exc)
        return REMOVED


def opaque_error_text(text: str, app: Any, statement: str | None = None) -> str:
    """An error text the application wrote: only ``app.code``, the class names ``app.classes`` that
    lead it (``Name: ``, ``(module.Name) ``) and SQLAlchemy's sanitized ``[SQL: ...]`` stay."""
    try:
        return _opaque(text, app)
    except Exception as exc:  # noqa: BLE001 - fail closed
        internal_error("opaque_error_text", exc)
        return REMOVED


def _scrub(text: str, statement: str | None) -> str:
    if not isinstance(text, str):
        text = str(text)
    suffix = ""
    if len(text) > _MAX_TEXT:
        text, suffix = text[:_MAX_TEXT], " [truncated by otel-dbperf]"
    names: set[str] = set()
    if statement:  # its dialect is unknown here: its double-quoted text proves nothing
        _remember(names, _strict(analyze(statement[:_MAX_TEXT]).sanitized))
    segments = _sqlalchemy_segments(text, names, strict=_DQ_STRING_DRIVERS.search(text, 0, 200) is not None)
    out = [seg if is_sql else _scrub_message(seg, names) for is_sql, seg in segments]
    return "".join(out) + suffix


_CLASS_PREFIX = re.compile(r"([^\W\d][\w.]*): |\(([^\W\d][\w.]*)\) ")
_KEPT_TAIL = re.compile(r"\s*(?:\(Background on this error at: https://sqlalche\.me/e/[\w./-]+\)\s*)?")


def _opaque(text: str, app: Any) -> str:
    if not isinstance(text, str):
        text = str(text)
    text = text[:_MAX_TEXT]
    marker = f"{app.code} {APP_REMOVED}"
    out: list[str] = []
    first = True
    for done, seg in _sqlalchemy_segments(text, set(), strict=_DQ_STRING_DRIVERS.search(text, 0, 200) is not None):
        if done:
            out.append(seg)
        elif first:
            first = False
            pos = 0
            for _ in range(_MAX_BLOCKS):
                m = _CLASS_PREFIX.match(seg, pos)
                if m is None or (m.group(1) or m.group(2)) not in app.classes:
                    break
                pos = m.end()
            out.append(seg[:pos] + marker + seg[len(seg.rstrip()) :])
        elif _KEPT_TAIL.fullmatch(seg):
            out.append(seg)  # whitespace between blocks, SQLAlchemy's "(Background on this error at: ...)"
        else:
            out.append(seg[len(seg.rstrip()) :])
    return "".join(out)


def _remember(names: set[str], sanitized: str) -> None:
    for m in _WORD.finditer(sanitized):
        if len(names) >= _MAX_NAMES:
            return
        names.add(m.group().lower())


def _strict(sanitized: str) -> str:
    """``sanitized`` without double-quoted text: where the dialect is unknown or reads it as a string."""
    return _DOUBLE_QUOTED.sub("?", sanitized) if '"' in sanitized else sanitized


def _sqlalchemy_segments(text: str, names: set[str], strict: bool) -> list[tuple[bool, str]]:
    """``(done, text)`` pieces: SQLAlchemy's "[SQL: ...]" sanitized, "[parameters: ...]" dropped."""
    if "[SQL: " not in text and "[parameters: " not in text:
        return [(False, text)]
    out: list[tuple[bool, str]] = []
    pos = 0
    for _ in range(_MAX_BLOCKS):
        sql_at = text.find("[SQL: ", pos)
        params_at = text.find("[parameters: ", pos)
        starts = [i for i in (sql_at, params_at) if i >= 0]
        if not starts:
            break
        start = min(starts)
        out.append((False, text[pos:start]))
        if start == sql_at:
            end = min(
                (i for i in (text.find("\n[parameters: ", start), text.find(_BACKGROUND, start)) if i >= 0),
                default=len(text),
            )
            body = text[start + 6 : end].rstrip()
            body = body[:-1] if body.endswith("]") else body
            sanitized = analyze(body).sanitized
            sanitized = _strict(sanitized) if strict else sanitized
            _remember(names, sanitized)
            out.append((True, "[SQL: " + sanitized + "]"))
        else:
            end = text.find(_BACKGROUND, start)
            end = len(text) if end < 0 else end
            out.append((True, "[parameters: redacted]"))
        pos = end
    rest = text[pos:]
    if "[SQL: " in rest or "[parameters: " in rest:
        out.append((True, " [truncated by otel-dbperf]"))  # more blocks than any real message has
    else:
        out.append((False, rest))
    return out


def _scrub_message(text: str, names: set[str]) -> str:
    """A message without SQLAlchemy blocks: pymysql's args tuple unwrapped, then block by block."""
    m = _MYSQL_ARGS.search(text)
    if m is not None:
        close = text.rfind(m.group(2) + ")")
        inner = text[m.end() : close] if close > m.end() else ""
        if inner and not re.search(r"(?<!\\)" + m.group(2), inner):  # a repr: its delimiter is escaped inside
            return (
                _scrub_blocks(text[: m.start()], names)
                + m.group()
                + _scrub_blocks(inner, names)
                + text[close : close + 2]
                + _scrub_blocks(text[close + 2 :], names)
            )
    return _scrub_blocks(text, names)


def _split_blocks(text: str) -> list[str]:
    """Lines grouped into blocks: a labelled line (``DETAIL:``...) starts a new block."""
    blocks: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if current and _LABEL.match(line):
            blocks.append("".join(current))
            current = []
        current.append(line)
    if current:
        blocks.append("".join(current))
    return blocks


def _scrub_blocks(text: str, names: set[str]) -> str:
    if not text:
        return text
    blocks = _split_blocks(text)
    # Statement excerpts first: a LINE 1 excerpt proves the names it holds.
    done: list[str | None] = []
    for block in blocks:
        done.append(_scrub_excerpt(block, names))
    return "".join(d if d is not None else _scrub_block(b, names) for b, d in zip(blocks, done, strict=True))


def _ending(block: str) -> str:
    return block[len(block.rstrip("\r\n")) :]


def _scrub_excerpt(block: str, names: set[str]) -> str | None:
    """A statement excerpt block, sanitized (or removed); None when ``block`` is not one."""
    m = _LINE_EXCERPT.match(block)
    if m is not None:
        lines = block.rstrip("\r\n").splitlines()
        excerpt = lines[0][m.start(2) :] if lines else ""
        if len(lines) > 1 and not all(_CARET.match(x) for x in lines[1:]):
            excerpt = ""  # more than one excerpt line: not libpq's shape, keep nothing
            keep = False
        else:
            keep = m.group(1) == "1" and not excerpt.startswith("...")
        if keep:
            sanitized = analyze(excerpt).sanitized
            _remember(names, sanitized)
            return f"LINE {m.group(1)}: {sanitized}" + _ending(block)
        return f"LINE {m.group(1)}: {_EXCERPT_REMOVED}" + _ending(block)
    m = _STATEMENT_EXCERPT.match(block)
    if m is not None:
        head = block[: m.start(1)]
        sanitized = analyze(m.group(1).rstrip("\r\n")).sanitized
        _remember(names, sanitized)
        return head + sanitized + _ending(block)
    return None


def _scrub_block(block: str, names: set[str]) -> str:
    """One message line (with its continuation lines): unquoted values, excerpts, then quotes."""
    block = _mask_unquoted(block)
    out: list[str] = []
    pos = 0
    n = len(block)
    next_at = {q: block.find(q) for q in "'\"`"}
    while pos < n:
        for q, at in next_at.items():
            if 0 <= at < pos:
                next_at[q] = block.find(q, pos)
        found = [at for at in next_at.values() if at >= 0]
        if not found:
            out.append(block[pos:])
            break
        at = min(found)
        out.append(block[pos:at])
        excerpt = _excerpt_at(block, at)
        if excerpt is not None:
            body_end, close_end = excerpt
            token = _strict(analyze(block[at + 1 : body_end]).sanitized)
            out.append(block[at : at + 1] + token + block[body_end:close_end])
            pos = close_end
            continue
        name = _NAME.match(block, at)
        if name is not None and _boundary(block, name.end()) and _proven(block, at, name.group(), names):
            out.append(name.group())
            pos = name.end()
            continue
        q = block[at]
        close = block.rfind(q)
        if close > at:
            out.append(q + "?" + q)
            pos = close + 1
        else:
            out.append(q + "?" + _ending(block))
            pos = n
    return "".join(out)


def _excerpt_at(block: str, at: int) -> tuple[int, int] | None:
    """The quoted statement excerpt opened at ``at``: (end of its text, end of its closing)."""
    for opening, closing in _EXCERPTS:
        if not block.startswith(opening, max(0, at + 1 - len(opening)), at + 1) or at + 1 < len(opening):
            continue
        last = None
        for last in closing.finditer(block, at + 1):  # noqa: B007 - the last one closes the excerpt
            pass
        if last is not None:
            return last.start(), last.end()
        if closing.pattern != '"':
            continue  # not this message (SQLite's "near" vs PostgreSQL's "at or near")
        end = len(block.rstrip("\r\n"))
        return end, end
    return None


def _boundary(text: str, end: int) -> bool:
    return end >= len(text) or not (text[end].isalnum() or text[end] in "_$'\"`")


def _proven(text: str, at: int, quoted: str, names: set[str]) -> bool:
    if _CATALOG_NOUN.search(text, max(0, at - 24), at):
        return True
    parts = [p.strip("\"'`").lower() for p in re.split(r"(?<=[\"'`])\.(?=[\"'`])|(?<=\w)\.(?=\w)", quoted)]
    return bool(parts) and all(p in names for p in parts)


def _mask_unquoted(block: str) -> str:
    """Values a driver writes without quotes: argument reprs, JSON excerpts, row values, a
    redis-py pipeline's failed command."""
    m = _PIPELINE_COMMAND.search(block)
    if m is not None:
        close = block.rfind(_PIPELINE_CLOSE, m.end())
        rest = block[close:] if close >= 0 else _PIPELINE_CLOSE + "?" + _ending(block)
        block = block[: m.end()] + (" ?" if close != m.end() else "") + rest
    for rx in (_ARGUMENT, _DATA_LINE):
        m = rx.search(block)
        if m is not None:
            block = block[: m.end()] + "?" + _ending(block)
    pos = 0
    for _ in range(_MAX_BLOCKS):
        m = _ROW_VALUES.search(block, pos)
        if m is None:
            return block
        line_end = block.find("\n", m.end())
        line_end = len(block) if line_end < 0 else line_end
        close = block.rfind(")", m.end(), line_end)
        if close < 0:  # never closed on its line: the rest of the block is the value
            return block[: m.end()] + "?)" + _ending(block)
        block = block[: m.end()] + "?" + block[close:]
        pos = m.end() + 1
    return block if _ROW_VALUES.search(block, pos) is None else block[:pos] + ")" + _ending(block)


_FRAME = re.compile(r'[ \t]+File "[^"\n]*", line \d+')
_CHAIN = (
    "Traceback (most recent call last):",
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


_CLASS_LINE = re.compile(r"[^\W\d][\w.]*(?=: |:?$)")


def _scrub_traceback(text: str, statement: str | None, source: bool, app: Any, messages: bool) -> str:
    if not isinstance(text, str):
        text = str(text)
    if len(text) > _MAX_TEXT:
        text = text[-_MAX_TEXT:]  # the end holds the exception message; the cut start is frames
    out: list[str] = []
    message: list[str] = []
    in_frames = False
    after_frames = False  # the message being read follows a traceback's frames: its first word is a class

    def flush() -> None:
        if not message:
            return
        body = "".join(message)
        message.clear()
        if not messages:
            out.append(body)
        elif app is None:
            out.append(scrub_error_text(body, statement))
        else:
            name = _CLASS_LINE.match(body) if after_frames else None
            if name is not None:
                rest = body[name.end() :]
                out.append(
                    name.group() + (": " + opaque_error_text(rest[2:], app, statement) if rest[:2] == ": " else rest)
                )
            else:
                out.append(opaque_error_text(body, app, statement))

    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\r\n")
        if stripped in _CHAIN:
            flush()
            in_frames = stripped == _CHAIN[0]
            out.append(line)
        elif in_frames and _FRAME.match(stripped):
            out.append(line)
        elif in_frames and stripped.startswith("    "):
            if source:
                out.append(line)  # a frame's source line and its caret markers
        elif not stripped and not message:
            out.append(line)
        else:
            if not message:
                after_frames = in_frames
            in_frames = False
            message.append(line)
    flush()
    return "".join(out)
