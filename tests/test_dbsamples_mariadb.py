"""Query samples and statement digests on real MariaDB (PyMySQL, as the dbmonitor loop connects).

A lock wait between two connections whose statements carry sqlcommenter comments: the waiter's sample
names its trace and the blocker's thread id (MariaDB shows no statement for a thread sleeping inside
its transaction: the blocker's sample is there, without a statement or a link). Digests: one record
per fingerprint whose normalized text (MariaDB respaces and requotes every token and writes IN-lists as
``(...)``) is the app's, with the executions that used no index.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from conftest import REQUIRE_SERVICES, maria_connect, until
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from otel_dbperf.dbmonitor.samples import emit_samples
from otel_dbperf.dbmonitor.statements import emit_statements
from otel_dbperf.report.workload import text_key


def _logger() -> tuple[Any, InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider.get_logger("test"), exporter


def _traceparent() -> tuple[str, int, int]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-01", int(trace_id, 16), int(span_id, 16)


def test_mariadb_lock_wait_sample_names_the_waiters_trace_and_the_blocker() -> None:
    monitor, holder, waiter = maria_connect(True), maria_connect(True), maria_connect(True)
    table = f"dbs_lock_{uuid.uuid4().hex[:8]}"
    with holder.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {table} VALUES (1, 0)")
        cur.execute("BEGIN")
        held, _, _ = _traceparent()
        cur.execute(f"SELECT n FROM {table} WHERE id = 1 FOR UPDATE /*traceparent='{held}'*/")
    waits, trace_id, span_id = _traceparent()
    thread = threading.Thread(
        target=lambda: waiter.cursor().execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1 /*traceparent='{waits}'*/")
    )
    thread.start()
    logger, exporter = _logger()

    def waiting(_: Any = None) -> bool:
        with monitor.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS")
            return bool(cur.fetchone()[0])

    try:
        until(waiting, bool)
        emitted = emit_samples(monitor, "mysql", logger)
    finally:
        with holder.cursor() as cur:
            cur.execute("COMMIT")
        thread.join(60)
    records = [d.log_record for d in exporter.get_finished_logs()]
    assert emitted == len(records) >= 2
    mine = [r for r in records if r.trace_id == trace_id]
    assert len(mine) == 1 and mine[0].span_id == span_id
    a = dict(mine[0].attributes or {})
    assert a["event.name"] == "db.server.query_sample" and a["db.system.name"] == "mysql"
    assert a["db.query.text"] == f"UPDATE {table} SET n = n + ? WHERE id = ?"
    assert list(a["mysql.blocking_thread_ids"]) == [holder.thread_id()]
    blocker = [r for r in records if dict(r.attributes or {}).get("mysql.thread_id") == holder.thread_id()]
    assert len(blocker) == 1 and dict(blocker[0].attributes or {})["mysql.command"] == "Sleep"
    with monitor.cursor() as cur:
        cur.execute(f"DROP TABLE {table}")
    for conn in (monitor, holder, waiter):
        conn.close()


def test_mariadb_digests_join_the_app_statement_by_normalized_text() -> None:
    monitor, app = maria_connect(True), maria_connect(True)
    with monitor.cursor() as cur:
        cur.execute("SELECT @@performance_schema")
        if cur.fetchone()[0] != 1:
            reason = "performance_schema is off on the test server (scripts/test turns it on)"
            pytest.fail(reason) if REQUIRE_SERVICES else pytest.skip(reason)
    table = f"dbs_digest_{uuid.uuid4().hex[:8]}"
    with app.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name varchar(50), stock int)")
        cur.execute(f"INSERT INTO {table} VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)")
    logger, exporter = _logger()
    assert emit_statements(monitor, "mysql", logger) == 0  # the baseline
    with app.cursor() as cur:
        for i in range(4):  # IN-lists of 2 to 5 values, a comment per request, an unindexed filter
            traceparent, _, _ = _traceparent()
            ids = ", ".join(["%s"] * (2 + i))
            cur.execute(
                f"SELECT {table}.id, {table}.name FROM {table} WHERE {table}.id IN ({ids}) "
                f"AND {table}.stock > %s /*traceparent='{traceparent}'*/",
                [*range(1, 3 + i), 0],
            )
    assert emit_statements(monitor, "mysql", logger) >= 1
    mine = [dict(d.log_record.attributes or {}) for d in exporter.get_finished_logs()]
    mine = [a for a in mine if table in a["db.query.text"] and a["db.query.summary"].startswith("SELECT")]
    assert len(mine) == 1, mine
    a = mine[0]
    assert a["event.name"] == "db.server.top_query" and a["mysql.calls"] == 4
    app_text = (  # the statement as the app's span shows it (sanitized: %s and literals alike)
        f"SELECT {table}.id, {table}.name FROM {table} WHERE {table}.id IN (%s, %s) AND {table}.stock > %s"
    )
    assert text_key(a["db.query.text"], "mysql") == text_key(app_text, "mysql")
    assert "traceparent" not in a["db.query.text"]
    with monitor.cursor() as cur:
        cur.execute(f"DROP TABLE {table}")
    monitor.close()
    app.close()
