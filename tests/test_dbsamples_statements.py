"""Workload statistics per fingerprint from real PostgreSQL's pg_stat_statements.

The statements reach the server as an app under DBPERF_SQLCOMMENTER sends them: ``$n`` parameters,
a different ``traceparent`` comment on each, IN-lists of different lengths. ``emit_statements`` sums
them into ONE ``db.server.top_query`` record whose fingerprint is the app's fingerprint of the
statement as the app's span shows it (SQLAlchemy's ``%(name)s`` form), with the interval's calls only.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from conftest import PG_DB, REQUIRE_SERVICES
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from otel_dbperf._sql import analyze
from otel_dbperf.dbmonitor.statements import emit_statements


@pytest.fixture(scope="module")
def pg(pg_user: str) -> Any:
    conn = psycopg.connect(host="127.0.0.1", user=pg_user, dbname=PG_DB, autocommit=True)
    loaded = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    if "pg_stat_statements" not in loaded:
        reason = "pg_stat_statements is not preloaded on the test server (scripts/test sets it up)"
        pytest.fail(reason) if REQUIRE_SERVICES else pytest.skip(reason)
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    conn.execute("CREATE TABLE IF NOT EXISTS dbsamples_items (id int PRIMARY KEY, name text)")
    conn.execute(
        "INSERT INTO dbsamples_items SELECT g, 'item ' || g FROM generate_series(1, 50) g ON CONFLICT DO NOTHING"
    )
    yield conn
    conn.close()


def _logger() -> tuple[Any, InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider.get_logger("test"), exporter


def test_server_statements_join_the_app_fingerprint(pg: Any) -> None:
    column = f"c_{uuid.uuid4().hex[:8]}"  # a statement of this test alone
    app_text = (
        f"SELECT dbsamples_items.id, dbsamples_items.name AS {column} FROM dbsamples_items "
        "WHERE dbsamples_items.id > %(id_1)s AND dbsamples_items.name IN (%(name_1_1)s, %(name_1_2)s, %(name_1_3)s)"
    )
    app_fingerprint = analyze(app_text, 4096, "postgresql").fingerprint
    logger, exporter = _logger()
    monitor = psycopg.connect(host="127.0.0.1", user="postgres", dbname=PG_DB, autocommit=True)
    assert emit_statements(monitor, "postgresql", logger) == 0  # the baseline
    for i in range(6):
        names = [f"item {n}" for n in range(1, 2 + i % 3)]  # IN-lists of 1, 2 and 3 values
        marks = ", ".join(["%s"] * len(names))
        traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        pg.execute(
            f"SELECT dbsamples_items.id, dbsamples_items.name AS {column} FROM dbsamples_items "
            f"WHERE dbsamples_items.id > %s AND dbsamples_items.name IN ({marks}) "
            f"/*db_driver='psycopg',traceparent='{traceparent}'*/",
            [0, *names],
        )
    emitted = emit_statements(monitor, "postgresql", logger)
    mine = [r for r in (d.log_record for d in exporter.get_finished_logs()) if column in str(r.attributes)]
    assert emitted >= 1 and len(mine) == 1, [dict(r.attributes or {}) for r in mine]
    a = dict(mine[0].attributes or {})
    assert a["event.name"] == "db.server.top_query" and mine[0].event_name == "db.server.top_query"
    assert a["dbperf.query.fingerprint"] == app_fingerprint
    assert a["db.system.name"] == "postgresql" and a["db.namespace"] == PG_DB
    assert a["postgresql.calls"] == 6 and a["postgresql.rows"] == 1 + 2 + 3 + 1 + 2 + 3
    assert a["postgresql.statements"] == 3  # three query ids (one per IN-list length), one fingerprint
    assert a["postgresql.shared_blks_hit"] + a["postgresql.shared_blks_read"] > 0
    assert a["postgresql.total_exec_time_ms"] > 0
    assert "traceparent" not in a["db.query.text"] and "item 1" not in a["db.query.text"]
    # the monitor's own reads of pg_stat_statements are not the workload
    texts = [str((d.log_record.attributes or {}).get("db.query.text")) for d in exporter.get_finished_logs()]
    assert not [t for t in texts if "pg_stat_statements" in t], texts
    # the next interval: nothing new from this statement
    exporter.clear()
    emit_statements(monitor, "postgresql", logger)
    assert not [d for d in exporter.get_finished_logs() if column in str(d.log_record.attributes)]
    monitor.close()


def test_a_database_without_the_extension_warns_once_and_emits_nothing(pg: Any, caplog: Any) -> None:
    logger, exporter = _logger()
    conn = psycopg.connect(host="127.0.0.1", user="postgres", dbname=PG_DB, autocommit=True)
    conn.close()  # a monitor whose connection went away
    assert emit_statements(conn, "postgresql", logger) == 0
    assert emit_statements(conn, "postgresql", logger) == 0
    warnings = [r for r in caplog.records if "pg_stat_statements failed" in r.getMessage()]
    assert len(warnings) == 1 and exporter.get_finished_logs() == ()
