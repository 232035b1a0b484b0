"""What a query sample may carry: no value of the statement, and a link only from a comment.

A fake DB-API connection hands ``emit_samples`` the rows a server could show: a statement cut off by
``track_activity_query_size`` inside a literal, a ``traceparent=`` inside a string literal (a value
someone typed, not the app's comment), a comment holding a value, and a failing server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from otel_dbperf.dbmonitor.samples import emit_samples

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


class _Cursor:
    def __init__(self, rows: Sequence[Sequence[Any]] | Exception) -> None:
        self.rows = rows

    def execute(self, sql: str, params: Any = None) -> None:
        if isinstance(self.rows, Exception):
            raise self.rows

    def fetchall(self) -> Sequence[Sequence[Any]]:
        assert not isinstance(self.rows, Exception)
        return self.rows

    def close(self) -> None:
        pass


class _Conn:
    def __init__(self, rows: Sequence[Sequence[Any]] | Exception) -> None:
        self.rows = rows

    def cursor(self) -> _Cursor:
        return _Cursor(self.rows)


def _pg_row(pid: int, query: str) -> tuple[Any, ...]:
    return (pid, "shop", "active", None, None, 12.5, 12.5, 40.0, None, query)


def _emit(rows: Sequence[Sequence[Any]] | Exception, dialect: str = "postgresql") -> list[Any]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    emitted = emit_samples(_Conn(rows), dialect, provider.get_logger("test"))
    records = [d.log_record for d in exporter.get_finished_logs()]
    assert emitted == len(records)
    return records


def test_no_value_of_a_sampled_statement_leaves_and_links_come_from_comments_only() -> None:
    records = _emit(
        [
            _pg_row(1, "SELECT * FROM users WHERE email = 'alice@example.com' AND token = 'cut-off-by-the-serv"),
            _pg_row(2, f"UPDATE notes SET body = 'traceparent=''00-{TRACE}-{SPAN}-01''' WHERE id = 731337"),
            _pg_row(3, f"SELECT 1 FROM t WHERE a = $1 /*user='bob-secret',traceparent='00-{TRACE}-{SPAN}-01'*/"),
        ]
    )
    assert len(records) == 3
    everything = repr([(r.body, dict(r.attributes or {})) for r in records])
    for value in ("alice@example.com", "cut-off", "traceparent", "bob-secret", "731337"):
        assert value not in everything, value
    truncated, spoofed, linked = records
    assert dict(truncated.attributes or {})["db.query.text"] == "SELECT * FROM users WHERE email = ? AND token = ?"
    assert not spoofed.trace_id and not truncated.trace_id  # a literal links nothing
    assert format(linked.trace_id, "032x") == TRACE and format(linked.span_id, "016x") == SPAN


def test_a_failing_server_is_one_warning_and_no_records(caplog: Any) -> None:
    class Refused(Exception):
        pass

    assert _emit(Refused("password authentication failed for user 'monitor' with secret xyz")) == []
    assert _emit(Refused("again")) == []
    warnings = [r.getMessage() for r in caplog.records if "query samples failed" in r.getMessage()]
    assert warnings == [
        "otel-dbperf dbmonitor: postgresql query samples failed: Refused; retried at the next interval (warned once)"
    ]
