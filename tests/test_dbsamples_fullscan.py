"""The report's frequent full scans, from MariaDB digest statistics: a scan that reads many rows per
call is listed; an unindexed read of a small table (a LIMIT over 20 rows, the driver's
information_schema look-up) is not advice worth giving."""

from __future__ import annotations

from typing import Any

from otel_dbperf.report.summary import Report
from otel_dbperf.report.workload import WorkloadStats


def _record(summary: str, fingerprint: str, calls: int, no_index: int, examined: int) -> dict[str, Any]:
    values = {
        "event.name": {"stringValue": "db.server.top_query"},
        "db.system.name": {"stringValue": "mysql"},
        "db.query.summary": {"stringValue": summary},
        "db.query.text": {"stringValue": f"{summary} WHERE x = ?"},
        "dbperf.query.fingerprint": {"stringValue": fingerprint},
        "mysql.calls": {"intValue": str(calls)},
        "mysql.total_time_ms": {"doubleValue": 1.0},
        "mysql.rows_examined": {"intValue": str(examined)},
        "mysql.no_index_used": {"intValue": str(no_index)},
        "mysql.full_scans": {"intValue": str(no_index)},
    }
    attributes = [{"key": k, "value": v} for k, v in values.items()]
    return {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "1", "attributes": attributes}]}]}]}


def test_full_scans_list_the_big_unindexed_reads_only() -> None:
    server = WorkloadStats()
    for message in (
        _record("SELECT products", "a" * 16, calls=10, no_index=10, examined=500_000),
        _record("SELECT customers", "b" * 16, calls=5, no_index=5, examined=100),
        _record("SELECT information_schema", "c" * 16, calls=2, no_index=2, examined=0),
        _record("SELECT orders", "d" * 16, calls=50, no_index=0, examined=50),
    ):
        assert server.add_message(message) == 1
    scans = server.join(Report())["full_scans"]
    assert [s["summary"] for s in scans] == ["SELECT products"]
    assert scans[0]["why"] == "10 of 10 calls used no index (50000 rows examined per call)"
