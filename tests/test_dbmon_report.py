"""The daily report (seed 003) with the database server's metrics: ``otel-dbperf report`` over the
spans plus what ``otel-dbperf dbmonitor --file`` (or a Collector's file exporter) wrote gains, per
server, the connection peak against max_connections, the error rate (rollbacks) and the cache hit
ratio of the report's window. Real PostgreSQL and MariaDB, the real monitor."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MARIA_DB, PG_DB, PG_HOST, PG_PORT, maria_connect

from otel_dbperf.report.cli import EXIT_OK, main

ROOT = Path(__file__).parent.parent
SPANS = Path(__file__).parent / "data" / "collector_file_exporter.jsonl"

pytestmark = pytest.mark.services


def once(dsn: str, out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL", "DBPERF_"))}
    env |= {"DBPERF_DBMONITOR_DSN": dsn, "DBPERF_DBMONITOR_SAMPLE_INTERVAL": "0"}
    env["DBPERF_DBMONITOR_STATEMENTS_INTERVAL"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "otel_dbperf.report.cli", "dbmonitor", "--once", "--file", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr


def report(*args: str) -> str:
    out = io.StringIO()
    assert main(["report", *args], out=out) == EXIT_OK
    return out.getvalue()


@pytest.fixture(scope="module")
def server_metrics(tmp_path_factory: pytest.TempPathFactory, pg_user: str) -> Path:
    """Two collections per server, with commits, rollbacks and reads between them and more
    sessions open at the second."""
    import psycopg

    path = tmp_path_factory.mktemp("dbmon-report") / "dbmonitor.jsonl"
    pg_dsn = f"postgresql://{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}"
    maria_dsn = f"mysql://root@127.0.0.1:3306/{MARIA_DB}"
    maria_connect().close()
    once(pg_dsn, path)
    once(maria_dsn, path)
    extra = [psycopg.connect(pg_dsn, autocommit=True) for _ in range(5)]
    m_extra = [maria_connect(autocommit=True) for _ in range(5)]
    try:
        for conn in extra:
            conn.execute("SELECT count(*) FROM pg_class")
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("SELECT 1")
            conn.execute("SELECT pg_stat_force_next_flush()")  # counted when the rollback returns
            conn.rollback()
        with m_extra[0].cursor() as cur:  # a rollback with nothing to undo is not counted by MariaDB
            cur.execute("CREATE TABLE IF NOT EXISTS dbmon_report (id int) ENGINE=InnoDB")
            cur.execute("BEGIN")
            cur.execute("INSERT INTO dbmon_report VALUES (1)")
            cur.execute("ROLLBACK")
        once(pg_dsn, path)
        once(maria_dsn, path)
    finally:
        for conn in extra:
            conn.close()
        for m in m_extra:
            m.close()
    return path


def test_the_report_has_each_servers_connection_peak_error_rate_and_cache_hit_ratio(server_metrics: Path) -> None:
    data = json.loads(report(str(SPANS), str(server_metrics), "--json"))
    servers = {s["instance"]: s for s in data["servers"]}
    pg, maria = servers[f"{PG_HOST}:{PG_PORT}"], servers["127.0.0.1:3306"]
    assert pg["db_system"] == "postgresql" and maria["db_system"] == "mysql"
    for server in (pg, maria):
        assert server["max_connections"] >= 1
        assert server["connections_peak"] >= 6  # the five extra sessions and the monitor's
        assert 0 < server["connections_peak_ratio"] <= 1
        assert server["rollbacks"] >= 1 and server["commits"] >= 0
        assert 0 < server["rollback_ratio"] <= 1
        assert 0 <= server["cache_hit_ratio"] <= 1
        assert server["collections"] == 2
    assert data["input"]["other_signal_lines"] >= 4
    text = report(str(SPANS), str(server_metrics))
    assert "Database servers" in text
    line = next(x for x in text.splitlines() if f"{PG_HOST}:{PG_PORT}" in x)
    assert "connections peak" in line and "rollbacks" in line and "cache hit" in line


def test_without_server_metrics_the_report_has_no_server_section() -> None:
    data = json.loads(report(str(SPANS), "--json"))
    assert data["servers"] == []
    assert "Database servers" not in report(str(SPANS))


def test_the_window_applies_to_the_server_metrics(server_metrics: Path) -> None:
    data = json.loads(report(str(SPANS), str(server_metrics), "--json", "--since", "2100-01-01T00:00:00+00:00"))
    assert data["servers"] == []
