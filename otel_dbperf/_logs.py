"""The app's ``logging`` records as OTLP log records, without a handler on the root logger.

The SDK's logging auto-instrumentation puts a handler on the root logger. Python's
logging then sees a configured root: ``logging.lastResort`` no longer prints
warnings and Flask no longer installs its stderr handler, so an unhandled
exception prints nothing on the console. Instead, otel-dbperf wraps
``logging.Logger.callHandlers``: the app's handlers run exactly as without it
(the same handlers, the same ``lastResort``), and then each record that reached
that point (the logger's level and filters passed) and would reach the root
logger (no ``propagate = False`` on the way) is also handed to
:class:`OtlpLogHandler`, which emits it through the SDK's ``LoggerProvider``
with the current trace and span ids.

Records of OpenTelemetry's and otel-dbperf's own loggers, of ``urllib3`` (the
exporter's HTTP client), and any record logged on an SDK export thread are not
exported, so exporting never feeds itself.

DB exception texts are scrubbed before they leave (:mod:`._errors`): when the
record's exception, or an exception among its arguments, is a database error (or
caused by one), ``exception.message``, ``exception.stacktrace`` and the body are
scrubbed; a body carrying SQLAlchemy's ``[SQL: ...]``/``[parameters: ...]``
blocks is scrubbed whatever its arguments were. When one of those exceptions
carries a text the application wrote (:func:`._error_kind.app_error`: a PL/pgSQL
``RAISE``, a ``SIGNAL``, a Redis script's error), the texts keep only its code and
class (``DBPERF_APP_ERROR_TEXT=true``: scrubbed by structure instead), and the body
has that exception's text replaced (all of it, when a piece of the app's text
still shows). Every record's tracebacks lose their source lines unless
``DBPERF_STACKTRACE_SOURCE=true``.

``DBPERF_APP_LOGS=false`` turns the hook off. An explicit
``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED`` is the user's choice: ``true``
gives the SDK's root handler as in plain OpenTelemetry (no hook, to export each
record once; otel-dbperf still scrubs what that handler exports), ``false``
exports no app records at all.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from opentelemetry._logs import SeverityNumber, get_logger_provider
from opentelemetry.context import get_current

from ._error_kind import AppError, app_error
from ._errors import REMOVED, opaque_error_text, scrub_error_text, scrub_traceback, without_source_lines
from ._guard import internal_error
from ._sdk_compat import wrap_log_handler_translate
from .settings import Settings

AUTO_INSTRUMENTATION = "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED"

_IGNORED = ("opentelemetry", "otel_dbperf", "urllib3")  # logger name prefixes never exported
# Packages whose exceptions are database errors (a module is in one when it is the package or below it).
_DB_PACKAGES = tuple(
    p + "."
    for p in (
        "sqlalchemy", "psycopg", "psycopg2", "psycopg_pool", "asyncpg", "pymysql", "MySQLdb", "mysql", "aiomysql",
        "asyncmy", "sqlite3", "_sqlite3", "aiosqlite", "oracledb", "cx_Oracle", "pyodbc", "pymssql", "django.db",
        "peewee", "tortoise", "databases", "redis", "valkey",
    )
)  # fmt: skip
_MAX_CHAIN = 8  # exceptions looked at along __cause__ / __context__
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_SEVERITY = (
    (logging.CRITICAL, SeverityNumber.FATAL, "FATAL"),
    (logging.ERROR, SeverityNumber.ERROR, "ERROR"),
    (logging.WARNING, SeverityNumber.WARN, "WARN"),
    (logging.INFO, SeverityNumber.INFO, "INFO"),
    (logging.DEBUG, SeverityNumber.DEBUG, "DEBUG"),
)


class _State:
    """This module's state: the hook's handler and the ``Logger.callHandlers`` it replaced."""

    def __init__(self) -> None:
        self.handler: Any = None
        self.original: Any = None


_state = _State()
_local = threading.local()


def start_log_hook(settings: Settings) -> None:
    """The configurator's step for app log records (each failure is its own, see ``_guard``)."""
    try:
        _start(settings)
    except Exception as exc:  # noqa: BLE001 - a startup step never stops the app
        internal_error("start_log_hook", exc)


def _start(settings: Settings) -> None:
    if not settings.enabled:
        return
    provider = get_logger_provider()
    if not hasattr(provider, "force_flush"):
        return  # not the SDK's provider: nobody asked for logs
    explicit = os.environ.get(AUTO_INSTRUMENTATION, "").strip().lower()
    if explicit == "true":
        _scrub_sdk_handlers(settings)
        return
    if explicit == "false" or not settings.app_logs or not _logs_exported():
        return
    install(OtlpLogHandler(provider, settings=settings))


def _logs_exported() -> bool:
    names = [n.strip() for n in os.environ.get("OTEL_LOGS_EXPORTER", "otlp").split(",")]
    return any(n and n != "none" for n in names)


def install(handler: logging.Handler) -> None:
    """Hand every dispatched record to ``handler`` too (idempotent; :func:`uninstall` undoes it)."""
    if _state.original is not None:
        _state.handler = handler
        return
    original: Callable[[logging.Logger, logging.LogRecord], None] = logging.Logger.callHandlers
    _state.handler, _state.original = handler, original

    def callHandlers(self: logging.Logger, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        try:
            original(self, record)
        finally:
            _export(self, record)

    callHandlers.__wrapped__ = original  # type: ignore[attr-defined]
    logging.Logger.callHandlers = callHandlers  # type: ignore[method-assign]


def uninstall() -> None:
    original = _state.original
    if original is not None:
        logging.Logger.callHandlers = original  # type: ignore[method-assign]
    _state.handler = _state.original = None


def _reaches_root(logger: logging.Logger) -> bool:
    """Whether ``logger``'s records propagate up to the root logger (where the SDK's handler would be)."""
    current: logging.Logger | None = logger
    while current is not None:
        if not current.propagate:
            return current.parent is None
        current = current.parent
    return True


def _export(logger: logging.Logger, record: logging.LogRecord) -> None:
    handler = _state.handler
    if handler is None or getattr(_local, "busy", False) or not _reaches_root(logger):
        return
    if _ignored(record.name):
        return
    if (record.threadName or "").startswith("Otel") or record.levelno < handler.level:
        return
    _local.busy = True
    try:
        handler.emit(record)
    except Exception as exc:  # noqa: BLE001 - never into the app's logging call
        internal_error("log record export", exc)
    finally:
        _local.busy = False


@lru_cache(maxsize=1024)
def _ignored(name: str) -> bool:
    """OpenTelemetry's, otel-dbperf's and the exporter's HTTP client's loggers (and their children)."""
    return any(name == p or name.startswith(p + ".") for p in _IGNORED)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_db_error(exc: BaseException | None) -> bool:
    """``exc``, or an exception it was raised from or during, comes from a database library."""
    for e in _chain(exc):
        for cls in type(e).__mro__:
            if ((cls.__module__ or "") + ".").startswith(_DB_PACKAGES):
                return True
    return False


def _exceptions(record: logging.LogRecord) -> list[BaseException]:
    """The record's exception, and the exceptions it logs as its message or among its arguments."""
    found: list[BaseException] = []
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, BaseException):
        found.append(exc)
    if isinstance(record.msg, BaseException):
        found.append(record.msg)
    args = record.args
    values = args.values() if isinstance(args, dict) else args if isinstance(args, tuple) else ()
    found += [a for a in values if isinstance(a, BaseException)]
    return found


def _involves_db_error(record: logging.LogRecord) -> bool:
    return any(is_db_error(e) for e in _exceptions(record))


def _severity(levelno: int) -> tuple[SeverityNumber, str]:
    for floor, number, text in _SEVERITY:
        if levelno >= floor:
            return SeverityNumber(number.value + min(3, (levelno - floor) // 2)), text
    return SeverityNumber.TRACE, "TRACE"


def scrub_record(
    record: logging.LogRecord, body: Any, attributes: dict[str, Any], settings: Settings | None = None
) -> Any:
    """Scrub DB error texts (and tracebacks' source lines) out of ``attributes`` (in place); the body to emit."""
    source = settings.stacktrace_source if settings is not None else False
    excs = _exceptions(record)
    db = any(is_db_error(e) for e in excs)
    app = None
    if db and not (settings is not None and settings.app_error_text):
        for e in excs:
            app = app_error(e)
            if app is not None:
                break
    message, stack = attributes.get("exception.message"), attributes.get("exception.stacktrace")
    if app is not None:
        if isinstance(message, str):
            attributes["exception.message"] = opaque_error_text(message, app)
        if isinstance(stack, str):
            attributes["exception.stacktrace"] = scrub_traceback(stack, None, source, app)
        return _opaque_body(body, excs, app, source) if isinstance(body, str) else body
    if db:
        if isinstance(message, str):
            attributes["exception.message"] = scrub_error_text(message)
        if isinstance(stack, str):
            attributes["exception.stacktrace"] = scrub_traceback(stack, None, source)
    elif isinstance(stack, str) and not source:
        attributes["exception.stacktrace"] = without_source_lines(stack)
    if isinstance(body, str):
        traceback_in_body = "Traceback (most recent call last):" in body
        if db or "[SQL: " in body or "[parameters: " in body:
            return scrub_traceback(body, None, source) if traceback_in_body else scrub_error_text(body)
        if traceback_in_body and not source:
            return without_source_lines(body)
    return body


def _opaque_body(body: str, excs: list[BaseException], app: AppError, source: bool) -> str:
    """The body with the texts of the app-raised exceptions (and of their chains) replaced, the rest
    scrubbed as any DB error text; all of it replaced when a piece of the application's text still shows."""
    seen: set[int] = set()
    todo: list[Any] = list(excs)
    while todo and len(seen) < 16:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        try:
            text = str(e)
        except Exception:  # noqa: BLE001 - an exception whose str() fails says nothing here
            text = ""
        if text and text in body:
            body = body.replace(text, opaque_error_text(text, app))
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    if "Traceback (most recent call last):" in body:
        body = scrub_traceback(body, None, source, app)
    else:
        body = scrub_error_text(body)
    if any(piece in body for piece in app.texts):
        return opaque_error_text(body, app)
    return body


class OtlpLogHandler(logging.Handler):
    """A ``logging`` record as an OTLP log record (trace context, code location, scrubbed exception)."""

    def __init__(self, logger_provider: Any, level: int = logging.NOTSET, settings: Settings | None = None) -> None:
        super().__init__(level)
        self._provider = logger_provider
        self._settings = settings
        self._loggers: dict[str, Any] = {}

    def _logger(self, name: str) -> Any:
        logger = self._loggers.get(name)
        if logger is None:
            logger = self._provider.get_logger(name)
            if len(self._loggers) < 1024:
                self._loggers[name] = logger
        return logger

    def emit(self, record: logging.LogRecord) -> None:
        attributes = _attributes(record)
        body: Any = self.format(record) if self.formatter else record.getMessage()
        if not record.args and not isinstance(record.msg, str):
            body = record.msg if isinstance(record.msg, (bool, int, float)) else str(record.msg)
        number, text = _severity(record.levelno)
        self._logger(record.name).emit(
            timestamp=int(record.created * 1e9),
            observed_timestamp=time.time_ns(),
            context=get_current(),
            severity_number=number,
            severity_text=text,
            body=scrub_record(record, body, attributes, self._settings),
            attributes=attributes,
        )


def _attributes(record: logging.LogRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        k: v
        for k, v in vars(record).items()
        if k not in _RESERVED and isinstance(v, (str, bool, int, float)) and not k.startswith("_")
    }
    attributes["code.file.path"] = record.pathname
    attributes["code.function.name"] = record.funcName
    attributes["code.line.number"] = record.lineno
    if record.exc_info and record.exc_info[0] is not None:
        exc_type, exc, tb = record.exc_info
        attributes["exception.type"] = exc_type.__qualname__
        if exc is not None:
            attributes["exception.message"] = str(exc)
        attributes["exception.stacktrace"] = "".join(traceback.format_exception(exc_type, exc, tb))
    return attributes


def _scrub_translated(record: logging.LogRecord, translated: Any, settings: Settings | None = None) -> Any:
    """The SDK handler's translation of ``record``, scrubbed (its texts removed if scrubbing fails)."""
    try:
        attributes = dict(translated.attributes or {})
        translated.body = scrub_record(record, translated.body, attributes, settings)
        translated.attributes = attributes
    except Exception as exc:  # noqa: BLE001 - fail closed
        internal_error("log record scrub", exc)
        translated.body = REMOVED
        translated.attributes = {
            k: v
            for k, v in (translated.attributes or {}).items()
            if k not in ("exception.message", "exception.stacktrace")
        }
    return translated


def _scrub_sdk_handlers(settings: Settings | None = None) -> None:
    """The SDK's own root handler (the user turned it on): scrub what it exports."""
    from opentelemetry.sdk._logs import LoggingHandler

    for handler in logging.getLogger().handlers:
        if type(handler) is LoggingHandler:

            def scrubbed(original: Any) -> Any:
                def translate(record: logging.LogRecord) -> Any:
                    return _scrub_translated(record, original(record), settings)

                return translate

            wrap_log_handler_translate(handler, scrubbed)
