"""Nothing leaks, round two: error texts the app's own SQL or scripts write, source lines in
exception tracebacks, and secrets in URL query strings.

1. A PL/pgSQL ``RAISE``/``ASSERT`` (any SQLSTATE, even ``23505``), a MariaDB ``SIGNAL`` (from a
   procedure, a trigger, or with ``MYSQL_ERRNO`` set), a Redis script's ``error_reply``/``error()``
   and a PostgreSQL server relaying another server's error (dblink) build their message from a
   bound value: real drivers against the real servers, through the driver's span, SQLAlchemy's
   span, an app span and the request span that see it propagate, and the app's log records. The
   value must be nowhere; the code and the class stay.
2. ``exception.stacktrace`` (span events and log records) keeps frames, not source lines.
3. ``url.query``, ``http.target``, ``http.url``, ``url.full`` and span names: values of
   secret-looking parameters are ``REDACTED``, on a real server span too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import MARIA_URL, PG_DB, PG_HOST, PG_PORT, base_env, get, maria_connect, serve
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode
from support.pipeline import Pipeline

from otel_dbperf import Settings, _logs
from otel_dbperf._urls import UrlRedactor

PID = os.getpid()
PG_SCHEMA = f"leakerr_{PID}"
MY_SUFFIX = f"leakerr_{PID}"
REDIS_LIBRARY = f"leakerr_{PID}"
REMOVED = "application-raised error text removed by otel-dbperf"


def _canary() -> str:
    return "Cnry" + secrets.token_hex(6)


class OrderRejected(Exception):
    """The app's own exception, raised from the database's (its message repeats the database's)."""


# --- the servers' side: functions, procedures, a trigger, a script library -------------------


@pytest.fixture(scope="module")
def pg_schema(pg_dsn: str) -> Iterator[str]:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {PG_SCHEMA}")
        conn.execute(f"""CREATE FUNCTION {PG_SCHEMA}.reject(v text) RETURNS int LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'order % rejected', v USING DETAIL = 'customer ' || v, HINT = 'ask ' || v; END $$""")
        conn.execute(f"""CREATE FUNCTION {PG_SCHEMA}.taken(v text, code text) RETURNS int LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION USING MESSAGE = 'taken: ' || v, ERRCODE = code; END $$""")
        conn.execute(f"""CREATE FUNCTION {PG_SCHEMA}.checked(v text) RETURNS int LANGUAGE plpgsql AS $$
            BEGIN ASSERT v IS NULL, 'bad value ' || v; RETURN 1; END $$""")
        conn.execute(f"""CREATE FUNCTION {PG_SCHEMA}.parsed(v text) RETURNS int LANGUAGE plpgsql AS $$
            BEGIN RETURN v::int; END $$""")
        conn.execute(f"CREATE TABLE {PG_SCHEMA}.users (id int PRIMARY KEY, email text UNIQUE)")
    yield PG_SCHEMA
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")


@pytest.fixture(scope="module")
def maria_objects() -> Iterator[str]:
    conn = maria_connect(autocommit=True)
    s = MY_SUFFIX
    with conn.cursor() as cur:
        for sql in (f"DROP PROCEDURE IF EXISTS {s}_reject", f"DROP PROCEDURE IF EXISTS {s}_dup",
                    f"DROP TABLE IF EXISTS {s}_t"):  # fmt: skip
            cur.execute(sql)
        cur.execute(f"""CREATE PROCEDURE {s}_reject(IN v VARCHAR(200)) BEGIN
            DECLARE m VARCHAR(255) DEFAULT CONCAT('order ', v, ' rejected');
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = m; END""")
        cur.execute(f"""CREATE PROCEDURE {s}_dup(IN v VARCHAR(200)) BEGIN
            DECLARE m VARCHAR(255) DEFAULT CONCAT('taken: ', v);
            SIGNAL SQLSTATE '23000' SET MYSQL_ERRNO = 1062, MESSAGE_TEXT = m; END""")
        cur.execute(f"CREATE TABLE {s}_t (id int AUTO_INCREMENT PRIMARY KEY, email varchar(200))")
        cur.execute(f"""CREATE TRIGGER {s}_tg BEFORE INSERT ON {s}_t FOR EACH ROW BEGIN
            DECLARE m VARCHAR(255) DEFAULT CONCAT('blocked ', NEW.email);
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = m; END""")
    yield s
    with conn.cursor() as cur:
        for sql in (f"DROP PROCEDURE IF EXISTS {s}_reject", f"DROP PROCEDURE IF EXISTS {s}_dup",
                    f"DROP TABLE IF EXISTS {s}_t"):  # fmt: skip
            cur.execute(sql)
    conn.close()


@pytest.fixture(scope="module")
def redis_client(redis_db: int) -> Iterator[Any]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    client.function_load(
        f"#!lua name={REDIS_LIBRARY}\n"
        f"redis.register_function('{REDIS_LIBRARY}_reject', "
        "function(keys, args) return redis.error_reply('order ' .. args[1] .. ' rejected') end)",
        replace=True,
    )
    yield client
    client.function_delete(REDIS_LIBRARY)
    client.close()


# --- the app's side: a traced provider, the log hook, the drivers instrumented ----------------


class _RawTexts(SpanExporter):
    """The spans' texts before the enriching exporter rewrites them (proves the case is real)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.texts.append(_span_texts(spans))
        return SpanExportResult.SUCCESS


def _span_texts(spans: Sequence[ReadableSpan]) -> str:
    parts: list[str] = []
    for span in spans:
        parts += [span.name, span.status.description or ""]
        parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        for event in span.events:
            parts.append(event.name)
            parts += [f"{k}={v}" for k, v in (event.attributes or {}).items()]
    return "\n".join(parts)


class Traced(Pipeline):
    """The pipeline (with a raw exporter beside it: what the processor is up against), and the log hook."""

    def __init__(self, settings: Settings) -> None:
        self.raw = _RawTexts()
        super().__init__(settings, raw_exporters=[self.raw])
        self.log_memory = InMemoryLogRecordExporter()
        self.log_provider = LoggerProvider()
        self.log_provider.add_log_record_processor(SimpleLogRecordProcessor(self.log_memory))
        handler = _logs.OtlpLogHandler(self.log_provider, settings=settings)
        _logs.install(handler)
        self._undo: list[Callable[[], None]] = []

    def records(self) -> list[Any]:
        return [r.log_record for r in self.log_memory.get_finished_logs()]

    def exported(self) -> str:
        logs = [f"{r.body}\n" + "\n".join(f"{k}={v}" for k, v in (r.attributes or {}).items()) for r in self.records()]
        return _span_texts(self.spans()) + "\n" + "\n".join(logs)

    def instrument_drivers(self) -> None:
        import pymysql
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.dbapi import trace_integration, unwrap_connect
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        for cls in (PsycopgInstrumentor, Psycopg2Instrumentor, AsyncPGInstrumentor, RedisInstrumentor):
            instrumentor = cls()
            assert not instrumentor.is_instrumented_by_opentelemetry, f"{cls.__name__} left instrumented"
            instrumentor.instrument(tracer_provider=self.provider)
            self._undo.append(instrumentor.uninstrument)
        trace_integration(pymysql, "connect", "mysql", tracer_provider=self.provider)
        self._undo.append(lambda: unwrap_connect(pymysql, "connect"))

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()
        _logs.uninstall()
        self.provider.shutdown()
        self.log_provider.shutdown()


@pytest.fixture
def traced() -> Iterator[Traced]:
    t = Traced(Settings())
    t.instrument_drivers()
    yield t
    t.close()


def _engine_tracer(engine: Any, provider: TracerProvider) -> None:
    """Contrib's SQLAlchemy listeners on this one engine."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import NoOpMeterProvider

    counter = NoOpMeterProvider().get_meter("t").create_up_down_counter("c")
    EngineTracer(provider.get_tracer("sqlalchemy"), engine, counter)


# --- the cases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AppCase:
    id: str
    driver: str  # psycopg, psycopg2, asyncpg, pymysql, redis
    path: str  # "driver": the driver's own span; "sqlalchemy": SQLAlchemy's span (and the driver's inside)
    call: str  # SQL ({S}: the schema or name prefix, {P}: the placeholder); redis: the form
    code: str  # what must stay: SQLSTATE, MySQL error number, Redis command


PG_FORMS = [
    ("raise", "SELECT {S}.reject({P})", "P0001"),  # message, DETAIL and HINT built from the value
    ("errcode_23505", "SELECT {S}.taken({P}, '23505')", "23505"),  # a server's SQLSTATE, raised by the app
    ("errcode_custom", "SELECT {S}.taken({P}, 'U0001')", "U0001"),
    ("assert", "SELECT {S}.checked({P})", "P0004"),
]
MY_FORMS = [
    ("signal", "CALL {S}_reject({P})", "1644"),
    ("signal_as_1062", "CALL {S}_dup({P})", "1062"),  # MYSQL_ERRNO = 1062: only the CALL tells
    ("trigger_signal", "INSERT INTO {S}_t (email) VALUES ({P})", "1644"),
]
REDIS_FORMS = [("error_reply", "EVAL"), ("error", "EVAL"), ("evalsha", "EVALSHA"), ("fcall", "FCALL"),
               ("pipeline", "EVAL")]  # fmt: skip
CASES = (
    [AppCase(f"{d}-{path}-{f}", d, path, sql, code) for d in ("psycopg", "psycopg2", "asyncpg")
     for path in ("driver", "sqlalchemy") for f, sql, code in PG_FORMS]
    + [AppCase(f"pymysql-{path}-{f}", "pymysql", path, sql, code) for path in ("driver", "sqlalchemy")
       for f, sql, code in MY_FORMS]
    + [AppCase(f"redis-{f}", "redis", "driver", f, code) for f, code in REDIS_FORMS]
)  # fmt: skip


def _pg_url(driver: str) -> str:
    return f"postgresql+{driver}://postgres@{PG_HOST}:{PG_PORT}/{PG_DB}"


def _run(case: AppCase, canary: str, request: pytest.FixtureRequest, provider: TracerProvider | None) -> None:
    """Provoke the case's error for real (``provider``: SQLAlchemy's spans go there)."""
    if case.driver == "redis":
        _redis(case.call, canary, request.getfixturevalue("redis_client"))
        return
    pg = case.driver != "pymysql"
    names = request.getfixturevalue("pg_schema" if pg else "maria_objects")
    sql = case.call.replace("{S}", names).replace("{P}", "$1" if case.driver == "asyncpg" else "%s")
    if case.path == "sqlalchemy":
        _through_sqlalchemy(case.driver, sql, canary, provider)
    elif case.driver == "psycopg":
        import psycopg

        with psycopg.connect(request.getfixturevalue("pg_dsn"), autocommit=True) as conn:
            conn.execute(sql, (canary,))
    elif case.driver == "psycopg2":
        import psycopg2

        conn2 = psycopg2.connect(request.getfixturevalue("pg_dsn"))
        try:
            conn2.cursor().execute(sql, (canary,))
        finally:
            conn2.close()
    elif case.driver == "asyncpg":
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, database=PG_DB, user="postgres")
            try:
                await conn.execute(sql, canary)
            finally:
                await conn.close()

        asyncio.run(run())
    else:
        conn3 = maria_connect()
        try:
            conn3.cursor().execute(sql, (canary,))
        finally:
            conn3.close()


def _through_sqlalchemy(driver: str, sql: str, canary: str, provider: TracerProvider | None) -> None:
    from sqlalchemy import create_engine

    if driver == "asyncpg":
        from sqlalchemy.ext.asyncio import create_async_engine

        aengine = create_async_engine(_pg_url("asyncpg"))
        if provider is not None:
            _engine_tracer(aengine.sync_engine, provider)

        async def run() -> None:
            try:
                async with aengine.connect() as conn:
                    await conn.exec_driver_sql(sql, (canary,))
            finally:
                await aengine.dispose()

        asyncio.run(run())
        return
    url = _pg_url(driver) if driver != "pymysql" else MARIA_URL
    engine = create_engine(url)
    if provider is not None:
        _engine_tracer(engine, provider)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(sql, (canary,))
    finally:
        engine.dispose()


def _redis(form: str, canary: str, client: Any) -> None:
    if form == "error_reply":
        client.eval("return redis.error_reply('order ' .. ARGV[1] .. ' rejected')", 0, canary)
    elif form == "error":
        client.eval("error('order ' .. ARGV[1] .. ' rejected')", 0, canary)
    elif form == "evalsha":
        client.register_script("return redis.error_reply('customer ' .. ARGV[1])")(args=[canary])
    elif form == "fcall":
        client.fcall(f"{REDIS_LIBRARY}_reject", 0, canary)
    else:
        pipe = client.pipeline()
        pipe.set("leakerr:x", "1")
        pipe.eval("return redis.error_reply('order ' .. ARGV[1] .. ' rejected')", 0, canary)
        pipe.execute()


def _raised(fn: Callable[[], None]) -> BaseException:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the error is the point
        return exc
    raise AssertionError("no error was raised")


def _order(t: Traced, run: Callable[[], None]) -> None:
    """A request that places an order: its app span wraps the database error in the app's own."""
    log = logging.getLogger("shop.orders")

    def request() -> None:
        with (
            t.tracer.start_as_current_span("GET /orders", kind=SpanKind.SERVER),
            t.tracer.start_as_current_span("place order"),
        ):
            try:
                run()
            except Exception as exc:
                log.exception("order failed")
                log.error("the database said: %s", exc)
                raise OrderRejected(f"could not place the order: {exc}") from exc

    assert isinstance(_raised(request), OrderRejected)


def _everything_said(exc: BaseException) -> str:
    """All the driver says about an error (its text, and a PostgreSQL error's fields)."""
    parts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e.args), str(getattr(e, "detail", "")), str(getattr(e, "hint", ""))]
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return "\n".join(parts)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_app_raised_error_texts_keep_the_code_and_class_only(
    case: AppCase, traced: Traced, request: pytest.FixtureRequest
) -> None:
    # the case is real: the database's error carries the value
    canary = _canary()
    assert canary in _everything_said(_raised(lambda: _run(case, canary, request, None)))

    canary = _canary()
    _order(traced, lambda: _run(case, canary, request, traced.provider))
    spans = traced.spans()
    assert canary in "\n".join(traced.raw.texts)  # what otel-dbperf was up against
    exported = traced.exported()
    assert canary.lower() not in exported.lower(), exported

    failed = [s for s in spans if s.kind is SpanKind.CLIENT and s.status.status_code is StatusCode.ERROR]
    assert failed, [s.name for s in spans]
    events = [e for s in failed for e in s.events if e.name == "exception"]
    assert events  # the driver's span records the exception (SQLAlchemy's sets its status only)
    for span in failed:  # the code and the class stay
        assert case.code in (span.status.description or ""), span.status.description
    for event in events:
        assert event.attributes and event.attributes["exception.type"]
        assert case.code in str(event.attributes["exception.message"])
        assert REMOVED in str(event.attributes["exception.message"])
    names = {s.name: s for s in spans}
    for name in ("GET /orders", "place order"):  # the app's exception repeats the database's text
        (event,) = [e for e in names[name].events if e.name == "exception"]
        assert event.attributes and event.attributes["exception.type"].endswith("OrderRejected")
        assert 'File "' in str(event.attributes["exception.stacktrace"])
    records = {str(r.body).split(":")[0]: r for r in traced.records()}
    assert set(records) == {"order failed", "the database said"}, records
    logged = records["order failed"].attributes
    assert case.code in logged["exception.message"] and REMOVED in logged["exception.message"]
    assert 'File "' in logged["exception.stacktrace"]
    assert case.code in str(records["the database said"].body)


def test_the_opt_in_keeps_app_error_texts(request: pytest.FixtureRequest, pg_schema: str) -> None:
    """``DBPERF_APP_ERROR_TEXT=true``: the app's own text stays (still scrubbed by structure)."""
    t = Traced(Settings(app_error_text=True))
    try:
        canary = _canary()
        case = AppCase("x", "psycopg", "sqlalchemy", PG_FORMS[0][1], "P0001")
        _order(t, lambda: _run(case, canary, request, t.provider))
        spans = t.spans()
        (db,) = [s for s in spans if s.kind is SpanKind.CLIENT and s.status.status_code is StatusCode.ERROR]
        assert f"order {canary} rejected" in (db.status.description or "")
        assert any(canary in str(r.attributes.get("exception.message")) for r in t.records())
    finally:
        t.close()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg"])
def test_server_written_errors_keep_their_text(
    driver: str, traced: Traced, request: pytest.FixtureRequest, pg_schema: str
) -> None:
    """The same SQLSTATE from the server itself (a real unique violation, a cast inside the same
    PL/pgSQL function) is no app text: scrubbed by structure, its words kept."""
    canary = _canary()
    for sql, kept in (
        (f"INSERT INTO {pg_schema}.users SELECT g, {{P}} FROM generate_series(1, 2) g", "violates unique constraint"),
        (f"SELECT {pg_schema}.parsed({{P}})", "invalid input syntax for type integer"),
    ):
        sql = sql.replace("{P}", "$1" if driver == "asyncpg" else "%s")
        case = AppCase("x", driver, "sqlalchemy", sql, "")
        _order(traced, lambda case=case: _run(case, canary, request, traced.provider))
        spans = traced.spans()
        failed = [s for s in spans if s.kind is SpanKind.CLIENT and s.status.status_code is StatusCode.ERROR]
        assert failed and all(kept in (s.status.description or "") for s in failed), [
            s.status.description for s in failed
        ]
        assert canary not in traced.exported()
        assert not any(REMOVED in (s.status.description or "") for s in failed)
        traced.memory.clear()
        traced.log_memory.clear()


def test_errors_relayed_from_another_server_are_opaque(pg_dsn: str) -> None:
    """dblink relays the remote server's error (here a remote RAISE): text the local server did not write."""
    import psycopg

    database = f"leakerr_dblink_{PID}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database}")
        conn.execute(f"CREATE DATABASE {database}")
    dsn = f"host={PG_HOST} port={PG_PORT} dbname={database} user=postgres"
    t = Traced(Settings())
    t.instrument_drivers()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION dblink")
        canary = _canary()
        remote = f"DO $$ BEGIN RAISE EXCEPTION 'remote %', '{canary}'; END $$"
        target = f"host={PG_HOST} port={PG_PORT} dbname={database} user=postgres"

        def run() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT dblink_exec(%s, %s)", (target, remote))

        _order(t, run)
        spans = t.spans()
        assert canary in "\n".join(t.raw.texts)
        assert canary not in t.exported()
        (db,) = [s for s in spans if s.kind is SpanKind.CLIENT and s.status.status_code is StatusCode.ERROR]
        assert "P0001" in (db.status.description or "") and REMOVED in (db.status.description or "")
    finally:
        t.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@pytest.mark.parametrize("form", ["error_reply", "evalsha", "pipeline"])
def test_redis_script_errors_in_logs_without_tracing(form: str, redis_client: Any) -> None:
    """No Redis span saw the error: the log record still knows a script wrote it (the call's frames)."""
    t = Traced(Settings())  # the log hook only: Redis is not instrumented
    try:
        canary = _canary()
        try:
            _redis(form, canary, redis_client)
        except Exception:  # noqa: BLE001
            logging.getLogger("shop.cache").exception("cache refill failed")
        (record,) = t.records()
        assert canary not in str(dict(record.attributes)) and canary not in str(record.body)
        assert REMOVED in record.attributes["exception.message"]
        assert record.attributes["exception.type"] == "ResponseError"
    finally:
        t.close()


def test_a_redis_pipeline_error_keeps_its_command_not_its_arguments(traced: Traced, redis_client: Any) -> None:
    """redis-py's ``Command # 2 (INCRBY <key> 1) of pipeline caused error: ...`` quotes the failed
    command's keys and values without quotes (no script here: the server's own text stays)."""
    canary = _canary()
    key = f"leakerr:{canary}"
    redis_client.set(key, "not a number")

    def run() -> None:
        pipe = redis_client.pipeline()
        pipe.get(key)
        pipe.incr(key)
        pipe.execute()

    try:
        _order(traced, run)
    finally:
        redis_client.delete(key)
    traced.spans()
    assert canary in "\n".join(traced.raw.texts)
    exported = traced.exported()
    assert canary not in exported, exported
    assert "Command # 2 (INCRBY ?) of pipeline caused error: value is not an integer" in exported
    assert REMOVED not in exported


# --- 8. source lines in exception tracebacks -------------------------------------------------

SOURCE_CANARY = "CnrySrcLine4e1d2b7c"  # a literal written in the app's code


def _check_token(token: str) -> None:
    raise PermissionError("token refused")


def _source_line_failures(t: Traced, pg_sync_url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(pg_sync_url)
    _engine_tracer(engine, t.provider)
    log = logging.getLogger("shop.reports")
    try:
        with t.tracer.start_as_current_span("GET /report", kind=SpanKind.SERVER), engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1 / 0 WHERE 'CnrySrcLine4e1d2b7c' <> ''")
    except Exception:  # noqa: BLE001
        log.exception("report failed")
    try:
        with t.tracer.start_as_current_span("GET /admin", kind=SpanKind.SERVER):
            _check_token("CnrySrcLine4e1d2b7c")
    except PermissionError:
        log.exception("admin refused")
    engine.dispose()


def test_exception_stacktraces_keep_frames_not_source_lines(pg_sync_url: str) -> None:
    t = Traced(Settings())
    try:
        _source_line_failures(t, pg_sync_url)
        assert SOURCE_CANARY in "\n".join(t.raw.texts)  # the root spans' tracebacks carried the line
        stacks = [str(e.attributes["exception.stacktrace"]) for s in t.spans() for e in s.events
                  if e.name == "exception" and e.attributes]  # fmt: skip
        stacks += [r.attributes["exception.stacktrace"] for r in t.records()]
        assert len(stacks) >= 4
        for stack in stacks:
            assert SOURCE_CANARY not in stack, stack
        assert all('File "' in stack for stack in stacks)
        assert any(f'"{__file__}", line' in stack and "_check_token" in stack for stack in stacks)
        assert SOURCE_CANARY not in t.exported()
    finally:
        t.close()


def test_stacktrace_source_opt_in_keeps_source_lines(pg_sync_url: str) -> None:
    """``DBPERF_STACKTRACE_SOURCE=true``: the same rule as ``code.stacktrace``, source lines kept."""
    t = Traced(Settings(stacktrace_source=True))
    try:
        _source_line_failures(t, pg_sync_url)
        assert SOURCE_CANARY in "\n".join(str(r.attributes["exception.stacktrace"]) for r in t.records())
        spans = t.spans()
        assert any(SOURCE_CANARY in str(e.attributes) for s in spans for e in s.events if e.name == "exception")
    finally:
        t.close()


# --- 9. URL query strings ------------------------------------------------------------------

SECRET_QUERY = {  # parameter -> redacted by default
    "token": True, "access_token": True, "api_key": True, "apikey": True, "apiKey": True, "password": True,
    "client_secret": True, "AWSAccessKeyId": True, "Signature": True, "sig": True, "X-Goog-Signature": True,
    "X-Amz-Credential": True, "X-Amz-Security-Token": True, "sessionid": True, "session_id": True,
    "auth": True, "key": True, "jwt": True, "refreshToken": True, "passwd": True,
    "q": False, "page": False, "keyword": False, "signup": False, "author": False, "monkey": False,
    "sort": False, "passenger": False,
}  # fmt: skip


def test_secret_looking_query_parameters_are_redacted() -> None:
    redactor = UrlRedactor(Settings().redact_url_params)
    for name, secret in SECRET_QUERY.items():
        got = redactor.query(f"{name}=Cnry1&x=1")
        assert got == (f"{name}=REDACTED&x=1" if secret else f"{name}=Cnry1&x=1"), name
    assert redactor.query("a=1&token=&b=2") == "a=1&token=&b=2"  # nothing to hide
    assert redactor.query("api%5Fkey=Cnry1;x=1") == "api%5Fkey=REDACTED;x=1"
    assert redactor.query("flag&token") == "flag&token"
    extended = UrlRedactor(Settings.from_env({"DBPERF_REDACT_URL_PARAMS": "default, orderRef"}).redact_url_params)
    assert extended.query("orderref=1&token=2&q=3") == "orderref=REDACTED&token=REDACTED&q=3"
    only = UrlRedactor(Settings.from_env({"DBPERF_REDACT_URL_PARAMS": "q"}).redact_url_params)
    assert only.query("q=1&token=2") == "q=REDACTED&token=2"
    assert Settings.from_env({"DBPERF_REDACT_URL_PARAMS": "none"}).redact_url_params == ()
    assert UrlRedactor(()).query("token=2") == "token=2"


def test_a_malformed_redaction_list_warns_and_keeps_the_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        s = Settings.from_env({"DBPERF_REDACT_URL_PARAMS": "token,a=b"})
    assert s.redact_url_params == Settings().redact_url_params
    assert "DBPERF_REDACT_URL_PARAMS" in caplog.text and "a=b" in caplog.text


def test_url_attributes_and_span_names_are_redacted_in_process() -> None:
    t = Traced(Settings())
    try:
        with t.tracer.start_as_current_span("GET /search?token=Cnry1&q=shoes", kind=SpanKind.SERVER) as root:
            root.set_attributes({
                "url.query": "token=Cnry2&q=shoes&api_key=Cnry3",
                "http.target": "/search?token=Cnry4&q=shoes#access_token=Cnry5",
                "url.path": "/search",
            })  # fmt: skip
            with t.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as client:
                client.set_attributes({
                    "url.full": "https://u:Cnry6@api.example/v1?sig=Cnry7&page=2",
                    "http.url": "https://api.example/v1?X-Amz-Signature=Cnry8",
                })  # fmt: skip
        spans = {s.kind: s for s in t.spans()}
        assert "Cnry" not in t.exported()
        a = spans[SpanKind.SERVER].attributes or {}
        assert spans[SpanKind.SERVER].name == "GET /search?token=REDACTED&q=shoes"
        assert a["url.query"] == "token=REDACTED&q=shoes&api_key=REDACTED"
        assert a["http.target"] == "/search?token=REDACTED&q=shoes#access_token=REDACTED"
        c = spans[SpanKind.CLIENT].attributes or {}
        assert c["url.full"] == "https://REDACTED:REDACTED@api.example/v1?sig=REDACTED&page=2"
        assert c["http.url"] == "https://api.example/v1?X-Amz-Signature=REDACTED"
    finally:
        t.close()


def test_a_real_server_span_has_its_secret_parameters_redacted(receiver: Any) -> None:
    """Flask under gunicorn and opentelemetry-instrument, old and new HTTP attributes (``http/dup``)."""
    env = base_env(receiver, APP_DB_URL="sqlite://", OTEL_SEMCONV_STABILITY_OPT_IN="http/dup",
                   DBPERF_REDACT_URL_PARAMS="default,orderRef")  # fmt: skip
    query = "token=Cnry1&q=shoes&api_key=Cnry2&orderRef=Cnry3&X-Goog-Signature=Cnry4&page=2"
    with serve("gunicorn", "flask_app:app", env, "-w", "1") as srv:
        assert get(f"{srv['url']}/ping?{query}")[0] == 200
        spans = receiver.wait_for(lambda s: any("Cnry" in str(x) or "REDACTED" in str(x) for x in s))
    (span,) = [s for s in spans if s["kind"] == "SERVER" and "shoes" in str(s["attributes"])]
    a = span["attributes"]
    expected = "token=REDACTED&q=shoes&api_key=REDACTED&orderRef=REDACTED&X-Goog-Signature=REDACTED&page=2"
    assert a["url.query"] == expected
    assert a["http.target"] == f"/ping?{expected}"
    assert "Cnry" not in str(spans)
