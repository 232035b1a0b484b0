"""A lock wait between two requests, seen from the server and linked to both requests' traces.

The app runs under opentelemetry-instrument with DBPERF_SQLCOMMENTER=true against real PostgreSQL:
/hold keeps a row lock in an open transaction, /wait waits on it. While it waits, the monitor's
``emit_samples`` (on its own autocommit psycopg connection, as the dbmonitor loop calls it) writes its
log records as OTLP JSON lines; found by trace id in that file, the waiting session's sample names the
waiter's trace and UPDATE span, and names the blocker's pid, whose own sample names the blocker's trace
and SELECT ... FOR UPDATE span. No literal of the statements reaches the file.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import psycopg
from conftest import PG_DB, base_env, get, serve, until
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

from otel_dbperf.dbmonitor.filesink import JsonLinesLogExporter
from otel_dbperf.dbmonitor.samples import emit_samples

SECRET = "s3cr3t-lock-value"  # tests/apps/dbsamples_lock_app.py's literal


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        for rl in json.loads(line)["resourceLogs"]:
            for sl in rl["scopeLogs"]:
                for r in sl["logRecords"]:
                    attrs = {a["key"]: a["value"] for a in r.get("attributes", [])}
                    out.append({**r, "attrs": attrs})
    return out


def _int(value: dict[str, Any]) -> int:
    return int(value["intValue"])


def test_lock_wait_sample_links_waiter_and_blocker_traces(receiver: Any, pg_sync_url: str, tmp_path: Path) -> None:
    env = base_env(receiver, APP_DB_URL=pg_sync_url, DBPERF_SQLCOMMENTER="true")
    log_file = tmp_path / "dbmonitor.jsonl"
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(JsonLinesLogExporter(str(log_file))))
    logger = provider.get_logger("otel_dbperf.dbmonitor")
    monitor = psycopg.connect(host="127.0.0.1", user="postgres", dbname=PG_DB, autocommit=True)

    def sessions(condition: str) -> list[tuple[Any, ...]]:
        return monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND " + condition
        ).fetchall()

    with serve("gunicorn", "dbsamples_lock_app:app", env, "-w", "1", "-k", "gthread", "--threads", "4") as srv:
        results: dict[str, int] = {}
        hold = threading.Thread(target=lambda: results.setdefault("hold", get(srv["url"] + "/hold")[0]))
        hold.start()
        until(lambda: sessions("state = 'idle in transaction' AND query LIKE '%FOR UPDATE%'"), bool)
        waiter = threading.Thread(target=lambda: results.setdefault("wait", get(srv["url"] + "/wait")[0]))
        waiter.start()
        until(lambda: sessions("wait_event_type = 'Lock' AND query LIKE 'UPDATE dbsamples_stock%'"), bool)
        try:
            emitted = emit_samples(monitor, "postgresql", logger)
        finally:
            assert get(srv["url"] + "/release")[0] == 200
            hold.join(60)
            waiter.join(60)
        assert results == {"hold": 200, "wait": 200}
        spans = receiver.wait_for(
            lambda s: sum(1 for x in s if x["kind"] == "SERVER" and x["name"].startswith("GET /")) >= 4
        )
    monitor.close()
    provider.shutdown()
    assert emitted >= 2

    def db_span(verb: str) -> dict[str, Any]:
        found = [
            s
            for s in spans
            if s["kind"] == "CLIENT"
            and str(s["attributes"].get("db.query.text", "")).startswith(verb)
            and not s["attributes"].get("dbperf.query.nested")  # the ORM's span, not the driver's inside it
        ]
        assert len(found) == 1, [s["attributes"].get("db.query.text") for s in spans]
        return found[0]

    locker, updater = db_span("SELECT n FROM dbsamples_stock"), db_span("UPDATE dbsamples_stock")
    records = _records(log_file)
    assert all(r["attrs"]["event.name"]["stringValue"] == "db.server.query_sample" for r in records)
    by_trace = {r.get("traceId"): r for r in records if r.get("traceId")}
    waiting = by_trace[updater["trace_id"]]
    assert waiting["spanId"] == updater["span_id"]
    assert waiting["attrs"]["postgresql.wait_event_type"]["stringValue"] == "Lock"
    assert (
        waiting["attrs"]["dbperf.query.fingerprint"]["stringValue"] == updater["attributes"]["dbperf.query.fingerprint"]
    )
    blockers = [_int(v) for v in waiting["attrs"]["postgresql.blocking_pids"]["arrayValue"]["values"]]
    blocking = by_trace[locker["trace_id"]]
    assert blocking["spanId"] == locker["span_id"]
    assert _int(blocking["attrs"]["postgresql.pid"]) in blockers
    assert blocking["attrs"]["postgresql.state"]["stringValue"] == "idle in transaction"
    assert blocking["attrs"]["db.query.text"]["stringValue"].endswith("FOR UPDATE")
    text = log_file.read_text()
    assert SECRET not in text and "traceparent" not in text
