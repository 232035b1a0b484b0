"""The log-record hook in-process: which records go out, scrubbed, and what Python's logging still sees."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from otel_dbperf import _logs

CANARY = "Cnry9d1e55b0"


class Hooked:
    def __init__(self) -> None:
        self.memory = InMemoryLogRecordExporter()
        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(SimpleLogRecordProcessor(self.memory))
        self.handler = _logs.OtlpLogHandler(self.provider)
        _logs.install(self.handler)

    def bodies(self) -> list[Any]:
        return [r.log_record.body for r in self.memory.get_finished_logs()]

    def records(self) -> list[Any]:
        return [r.log_record for r in self.memory.get_finished_logs()]


@pytest.fixture
def hooked() -> Iterator[Hooked]:
    h = Hooked()
    yield h
    _logs.uninstall()
    h.provider.shutdown()


def _integrity_error() -> IntegrityError:
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (email TEXT UNIQUE)"))
    try:
        with engine.begin() as conn:
            for _ in range(2):
                conn.execute(text("INSERT INTO users (email) VALUES (:email)"), {"email": CANARY})
    except IntegrityError as exc:
        return exc
    raise AssertionError("no error")


def test_no_handler_is_added_and_records_go_out_with_the_trace(hooked: Hooked) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("request") as span:
        logging.getLogger("shop.orders").warning("order %s is late", 42)
    assert root.handlers == before  # Python's logging sees exactly the app's handlers
    (record,) = hooked.records()
    assert record.body == "order 42 is late" and record.severity_text == "WARN"
    assert record.trace_id == span.get_span_context().trace_id
    assert record.attributes["code.function.name"] == "test_no_handler_is_added_and_records_go_out_with_the_trace"


def test_db_exception_texts_are_scrubbed(hooked: Hooked) -> None:
    exc = _integrity_error()
    log = logging.getLogger("shop")
    try:
        raise exc
    except IntegrityError:
        log.exception("signup failed")
    log.error("the database said: %s", exc)
    log.error("as text: %s", str(exc))  # SQLAlchemy's blocks give it away even as a plain string
    records = hooked.records()
    assert [r.body.split(":")[0] for r in records] == ["signup failed", "the database said", "as text"]
    for record in records:
        assert CANARY not in repr(record.body) and CANARY not in repr(dict(record.attributes))
    first = records[0].attributes
    assert first["exception.type"] == "IntegrityError"
    assert "[parameters: redacted]" in first["exception.message"]
    assert 'File "' in first["exception.stacktrace"] and "UNIQUE constraint failed" in first["exception.stacktrace"]


def test_other_exceptions_keep_their_text(hooked: Hooked) -> None:
    try:
        {}["user_id"]
    except KeyError:
        logging.getLogger("shop").exception("lookup of 'user_id' failed")
    (record,) = hooked.records()
    assert record.body == "lookup of 'user_id' failed" and record.attributes["exception.message"] == "'user_id'"


@pytest.mark.parametrize(
    "name", ["opentelemetry.sdk._logs", "otel_dbperf", "otel_dbperf.explain", "urllib3.connectionpool"]
)
def test_our_own_loggers_are_never_exported(hooked: Hooked, name: str) -> None:
    logging.getLogger(name).warning("export failed")
    top = name.split(".")[0]
    logging.getLogger(top + "_app").warning("an app logger that only shares a prefix")
    assert hooked.bodies() == ["an app logger that only shares a prefix"]


def test_records_logged_on_export_threads_are_not_exported(hooked: Hooked) -> None:
    thread = threading.Thread(target=lambda: logging.getLogger("x").warning("from the exporter"),
                              name="OtelBatchLogRecordProcessor")  # fmt: skip
    thread.start()
    thread.join()
    assert hooked.bodies() == []


def test_records_that_do_not_reach_the_root_are_not_exported(hooked: Hooked) -> None:
    quiet = logging.getLogger("gunicorn.access.test")
    quiet.propagate = False
    try:
        quiet.warning("GET / 200")
    finally:
        quiet.propagate = True
    assert hooked.bodies() == []


def test_a_record_logged_while_exporting_does_not_recurse(hooked: Hooked, monkeypatch: pytest.MonkeyPatch) -> None:
    original = hooked.handler.emit

    def noisy(record: logging.LogRecord) -> None:
        logging.getLogger("app").warning("logged by the exporter path")
        original(record)

    monkeypatch.setattr(hooked.handler, "emit", noisy)
    logging.getLogger("app").warning("the app's record")
    assert hooked.bodies() == ["the app's record"]


def test_the_app_handlers_and_last_resort_still_run(hooked: Hooked, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # a process with no logging configuration (pytest adds its own handlers)
    try:
        logging.getLogger("batch").warning("disk almost full")
    finally:
        root.handlers[:] = saved
    assert "disk almost full" in capsys.readouterr().err  # logging.lastResort
    assert hooked.bodies() == ["disk almost full"]


def test_uninstall_restores_logging() -> None:
    original = logging.Logger.callHandlers
    h = Hooked()
    assert logging.Logger.callHandlers is not original
    _logs.uninstall()
    assert logging.Logger.callHandlers is original
    logging.getLogger("shop").warning("after")
    assert h.bodies() == []


def test_db_error_detection_follows_the_chain() -> None:
    exc = _integrity_error()

    class Conflict(Exception):
        pass

    try:
        raise Conflict("email taken") from exc
    except Conflict as wrapped:
        assert _logs.is_db_error(wrapped)
    assert not _logs.is_db_error(KeyError("x")) and not _logs.is_db_error(None)
