"""What kind of wait a database error is: timeouts, lock waits, deadlocks, pool exhaustion.

:func:`classify` reads the *structure* of the exception, never its text: the SQLSTATE a
PostgreSQL driver attaches (psycopg ``sqlstate``, psycopg2 ``pgcode``, asyncpg ``sqlstate``),
the server error number of a MySQL/MariaDB driver (``errno``, or ``args[0]`` for PyMySQL and
mysqlclient; never its SQLSTATE, whose codes mean other things than PostgreSQL's), and
SQLAlchemy's pool ``TimeoutError``. It follows SQLAlchemy's wrapping (``.orig``) and the exception
chain (``__cause__``) a few steps.

The kinds are the values of ``dbperf.db.error.kind`` (design.md section 4):

=====================  ==============================================================
``statement_timeout``  PostgreSQL 57014 (query canceled: ``statement_timeout``),
                       MySQL 3024 (``max_execution_time``), MariaDB 1969 (``max_statement_time``)
``lock_timeout``       PostgreSQL 55P03 (lock not available: ``lock_timeout``, ``NOWAIT``),
                       MySQL/MariaDB 1205 (lock wait timeout exceeded)
``deadlock``           PostgreSQL 40P01, MySQL/MariaDB 1213
``serialization``      PostgreSQL 40001 (could not serialize access)
``pool_timeout``       SQLAlchemy's ``sqlalchemy.exc.TimeoutError`` (no connection free in time)
=====================  ==============================================================

:func:`app_error` tells, by the same kind of structure, an error whose text the application
wrote (or a server relayed from elsewhere) from one the server wrote itself: its text is the
app's own words and values, so only its code and class may be exported (see
:func:`otel_dbperf._errors.opaque_error_text`):

* PostgreSQL: the server routine that reported it (``diag.source_function`` of psycopg and
  psycopg2, asyncpg's ``server_source_function``) is PL/pgSQL's ``RAISE`` or ``ASSERT``
  (``exec_stmt_raise``, ``exec_stmt_assert``: whatever SQLSTATE ``USING ERRCODE`` gave it, even
  ``23505``), or a relay of another server's error (dblink's ``dblink_res_error``, postgres_fdw's
  ``pgfdw_report_error``), or its source file is another procedural language's (PL/Python,
  PL/Perl, PL/Tcl); and, whatever the routine, SQLSTATE ``P0001`` (raise_exception), ``P0004``
  (assert_failure) and class ``38`` (external routine exception).
* MySQL/MariaDB: error 1644 (an unhandled ``SIGNAL``/``RESIGNAL``), 1642 and 1643 (its warning and
  not-found forms), 1430 (a FederatedX relay); and any error of a statement that runs a stored
  program directly (``CALL``, ``SIGNAL``, ``RESIGNAL``, ``BEGIN NOT ATOMIC`` and the other compound
  statements): there ``SET MYSQL_ERRNO`` may have given it any number (the statement comes from
  the DB span, or from SQLAlchemy's exception). A ``SIGNAL ... SET MYSQL_ERRNO = n`` in a trigger
  or a stored function reached from a plain statement is, on the wire, the server's own error
  ``n``: nothing tells them apart.
* Redis/Valkey: an error reply (``ResponseError``) to a script or function call (``EVAL``,
  ``EVALSHA``, their ``_RO`` forms, ``FCALL``, ``FCALL_RO``, ``SCRIPT``, ``FUNCTION``) or to a module
  command (a name with a dot, ``FT.SEARCH``): the command comes from the DB span's statement, the
  pipeline's error annotation, or redis-py's ``execute_command`` frame in the traceback.

A verdict made where the statement is known (a DB span's end) is remembered for the exception
objects of the chain (weakly), so a log record of the same exception finds it.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any

from . import _forksafe

STATEMENT_TIMEOUT = "statement_timeout"
LOCK_TIMEOUT = "lock_timeout"
DEADLOCK = "deadlock"
SERIALIZATION = "serialization"
POOL_TIMEOUT = "pool_timeout"
KINDS = (STATEMENT_TIMEOUT, LOCK_TIMEOUT, DEADLOCK, SERIALIZATION, POOL_TIMEOUT)

#: PostgreSQL SQLSTATE -> kind
SQLSTATES = {"57014": STATEMENT_TIMEOUT, "55P03": LOCK_TIMEOUT, "40P01": DEADLOCK, "40001": SERIALIZATION}
#: MySQL / MariaDB server error number -> kind
MYSQL_ERRORS = {1205: LOCK_TIMEOUT, 1213: DEADLOCK, 3024: STATEMENT_TIMEOUT, 1969: STATEMENT_TIMEOUT}
#: drivers whose exceptions carry the server error number as ``args[0]``
_ARGS_ERRNO_MODULES = ("pymysql", "MySQLdb", "aiomysql", "asyncmy", "mysql", "mariadb", "_mysql")
_MAX_DEPTH = 4  # exceptions followed through .orig / __cause__


def classify(exc: BaseException | None) -> str | None:
    """The kind of ``exc`` (one of :data:`KINDS`), or None when it is none of them."""
    seen = 0
    while exc is not None and seen < _MAX_DEPTH:
        seen += 1
        kind = _own_kind(exc)
        if kind is not None:
            return kind
        nxt = getattr(exc, "orig", None)
        if not isinstance(nxt, BaseException) or nxt is exc:
            nxt = exc.__cause__
        exc = nxt
    return None


def _own_kind(exc: BaseException) -> str | None:
    cls = type(exc)
    module = cls.__module__ or ""
    if cls.__name__ == "TimeoutError" and module == "sqlalchemy.exc":
        return POOL_TIMEOUT
    if not module.startswith(_ARGS_ERRNO_MODULES):
        for name in ("sqlstate", "pgcode"):
            code = getattr(exc, name, None)
            if isinstance(code, str):
                kind = SQLSTATES.get(code)
                if kind is not None:
                    return kind
        return None
    # A MySQL driver: the server's error number decides. Its SQLSTATE (PyMySQL sets ``sqlstate``)
    # is not PostgreSQL's: a MySQL deadlock (1213) is SQLSTATE 40001, PostgreSQL's serialization failure.
    number = getattr(exc, "errno", None)
    if not isinstance(number, int):
        args = exc.args
        number = args[0] if args and isinstance(args[0], int) else None
    return MYSQL_ERRORS.get(number) if isinstance(number, int) else None


#: the request attribute that counts each kind (on the request's root span)
REQUEST_COUNTS = {
    STATEMENT_TIMEOUT: "dbperf.db.statement_timeouts",
    LOCK_TIMEOUT: "dbperf.db.lock_timeouts",
    DEADLOCK: "dbperf.db.deadlocks",
    SERIALIZATION: "dbperf.db.serialization_failures",
    POOL_TIMEOUT: "dbperf.db.pool_timeouts",
}


def counted(kind: str, request: Any, count_error: Any = None) -> None:
    """A failed DB span of ``kind`` (request thread, errors only): the request's count, and
    ``count_error(kind)`` (the ``dbperf.db.errors`` counter, which the processor is given by
    ``DbPerfSpanProcessor.attach_error_counter``; None: no counter).

    Pool timeouts are counted where the checkout failed (:mod:`otel_dbperf._sqla.pools`), which sees them
    with or without a span around the checkout.
    """
    if kind == POOL_TIMEOUT:
        return
    if request is not None:
        request.add(REQUEST_COUNTS[kind], 1)
    if count_error is not None:
        count_error(kind)


# --- application-raised errors ---------------------------------------------------------------


@dataclass(frozen=True)
class AppError:
    """An error whose text the application wrote (or a server relayed): only ``code`` (SQLSTATE,
    error number, Redis command) and the class names in ``classes`` may be exported."""

    code: str
    classes: frozenset[str]
    #: the app-written pieces of its text (message, detail, hint): never exported, looked for in
    #: other texts that may repeat them (a log record's body)
    texts: tuple[str, ...] = ()


#: PostgreSQL routines that report a text the application wrote, or relay another server's error
PG_APP_ROUTINES = frozenset({"exec_stmt_raise", "exec_stmt_assert", "dblink_res_error", "pgfdw_report_error"})
#: source files of procedural languages whose errors carry the function's own text
PG_APP_FILES = frozenset({"plpy_elog.c", "plpy_plpymodule.c", "plperl.c", "pltcl.c"})
#: SQLSTATEs only the application's code raises: raise_exception, assert_failure
PG_APP_SQLSTATES = frozenset({"P0001", "P0004"})
#: MySQL / MariaDB: ER_SIGNAL_WARN, ER_SIGNAL_NOT_FOUND, ER_SIGNAL_EXCEPTION, ER_QUERY_ON_FOREIGN_DATA_SOURCE
MYSQL_APP_ERRORS = frozenset({1642, 1643, 1644, 1430})
#: a statement that runs a stored program itself (after comments, an optional label)
_MYSQL_PROGRAM = re.compile(
    r"\s*(?:[^\W\d]\w*\s*:\s*)?(?:CALL|SIGNAL|RESIGNAL|BEGIN\s+NOT\s+ATOMIC|IF|CASE|LOOP|REPEAT|WHILE|FOR)\b", re.I
)
#: Redis commands that run the application's scripts and functions
REDIS_SCRIPT_COMMANDS = frozenset(
    {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO", "SCRIPT", "FUNCTION"}
)
_REDIS_MODULES = ("redis", "valkey")
_PIPELINE = re.compile(r"Command # \d+ \((\S+)")  # redis-py's annotation of a pipeline's failed command
_REDIS_CALLS = frozenset({"execute_command", "_execute_command"})
_MAX_CHAIN = 8  # exceptions looked at along .orig / __cause__ / __context__
_MAX_FRAMES = 64  # traceback entries looked at for redis-py's execute_command
_MAX_PIECE = 4096  # characters of one app-written piece remembered

_marks: weakref.WeakKeyDictionary[BaseException, AppError] = weakref.WeakKeyDictionary()
_marks_lock = _forksafe.lock("error_kind.marks")


def app_error(exc: BaseException | None, statement: Any = None, system: Any = None) -> AppError | None:
    """The :class:`AppError` of ``exc`` (or of an exception of its chain), or None when the server
    wrote its text. ``statement`` and ``system``: the DB span's, when known."""
    chain = _app_chain(exc)
    if not chain:
        return None
    classes: set[str] = set()
    for e in chain:
        cls = type(e)
        classes.add(cls.__qualname__)
        classes.add(f"{cls.__module__}.{cls.__qualname__}")
    found: AppError | None = None
    with _marks_lock:
        for e in chain:
            try:
                found = _marks.get(e)
            except TypeError:  # not weakly referenceable
                continue
            if found is not None:
                break
    if found is None:
        if not isinstance(statement, str):  # SQLAlchemy's exception carries it
            statements = (getattr(e, "statement", None) for e in chain)
            statement = next((s for s in statements if isinstance(s, str)), None)
        for e in chain:
            own = _own_app_error(e, statement, system)
            if own is not None:
                found = AppError(own[0], frozenset(), own[1])
                break
        if found is None:
            return None
    result = AppError(found.code, frozenset(classes) | found.classes, found.texts)
    with _marks_lock:
        for e in chain:
            try:
                _marks[e] = result
            except TypeError:
                pass
    return result


def _app_chain(exc: BaseException | None) -> list[BaseException]:
    chain: list[BaseException] = []
    todo = [exc]
    seen: set[int] = set()
    while todo and len(chain) < _MAX_CHAIN:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        chain.append(e)
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return chain


def _own_app_error(exc: BaseException, statement: str | None, system: Any) -> tuple[str, tuple[str, ...]] | None:
    """(code, app-written pieces) when ``exc`` itself carries a text the application wrote."""
    cls = type(exc)
    module = cls.__module__ or ""
    if module.startswith(_ARGS_ERRNO_MODULES):
        return _mysql_app_error(exc, statement)
    if module.startswith(_REDIS_MODULES):
        return _redis_app_error(exc, statement if system in (None, *_REDIS_MODULES) else None)
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if not isinstance(code, str):
        return None
    diag = getattr(exc, "diag", None)
    if diag is not None:  # psycopg, psycopg2
        routine, source = getattr(diag, "source_function", None), getattr(diag, "source_file", None)
        pieces = [getattr(diag, n, None) for n in ("message_primary", "message_detail", "message_hint")]
    else:  # asyncpg
        routine, source = getattr(exc, "server_source_function", None), getattr(exc, "server_source_filename", None)
        pieces = [getattr(exc, n, None) for n in ("message", "detail", "hint")]
    if routine in PG_APP_ROUTINES or source in PG_APP_FILES or code in PG_APP_SQLSTATES or code.startswith("38"):
        return code, _pieces(pieces)
    return None


def _mysql_app_error(exc: BaseException, statement: str | None) -> tuple[str, tuple[str, ...]] | None:
    number = getattr(exc, "errno", None)
    args = exc.args
    if not isinstance(number, int):
        number = args[0] if args and isinstance(args[0], int) else None
    if not isinstance(number, int):
        return None
    pieces = _pieces([*args[1:2], getattr(exc, "msg", None)])
    if number in MYSQL_APP_ERRORS:
        return str(number), pieces
    if isinstance(statement, str) and _MYSQL_PROGRAM.match(_without_comments(statement)):
        return str(number), pieces
    return None


def _without_comments(statement: str) -> str:
    from ._sql import analyze

    return analyze(statement[:_MAX_PIECE], 4096, "mysql").sanitized


def _redis_app_error(exc: BaseException, statement: str | None) -> tuple[str, tuple[str, ...]] | None:
    if not any(c.__name__ == "ResponseError" for c in type(exc).__mro__):
        return None  # a connection or client error: the client's own text
    command = _script_command(statement) if statement else None
    if command is None:
        command = _redis_command(exc)
    if command is None or not (command in REDIS_SCRIPT_COMMANDS or "." in command):
        return None
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
    pieces = [text]
    if text is not None:
        m = _PIPELINE.match(text)
        if m is not None:
            pieces.append(text.partition(" of pipeline caused error: ")[2])
        pieces.append(text.partition(" script: ")[0])
    return command, _pieces(pieces)


def _script_command(statement: str) -> str | None:
    """The script or module command of a Redis span's statement (a pipeline: one command a line)."""
    for line in statement.splitlines()[:256]:
        word = line.strip().partition(" ")[0].upper()
        if word in REDIS_SCRIPT_COMMANDS or "." in word:
            return word
    return None


def _redis_command(exc: BaseException) -> str | None:
    """The command that failed: from a pipeline's annotation, or redis-py's ``execute_command`` frame."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    m = _PIPELINE.match(text)
    if m is not None:
        return m.group(1).upper()
    tb = exc.__traceback__
    for _ in range(_MAX_FRAMES):
        if tb is None:
            break
        frame = tb.tb_frame
        if frame.f_code.co_name in _REDIS_CALLS and str(frame.f_globals.get("__name__", "")).startswith(_REDIS_MODULES):
            args = frame.f_locals.get("args")
            if isinstance(args, tuple) and args:
                name = args[0]
                name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
                return name.partition(" ")[0].upper()
        tb = tb.tb_next
    return None


def _pieces(values: list[Any]) -> tuple[str, ...]:
    return tuple(v[:_MAX_PIECE] for v in values if isinstance(v, str) and v.strip())
