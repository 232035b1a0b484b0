"""``otel-dbperf report`` joins the database monitor's statistics to the app's fingerprints.

A SQLAlchemy workload under opentelemetry-instrument (DBPERF_SQLCOMMENTER=true: every statement's text
differs on the server by its comment) writes its spans as OTLP JSON lines; ``emit_statements`` reads
real PostgreSQL's pg_stat_statements before and after it and writes its records as OTLP JSON logs lines
to a second file; the report, given both files, prints the server columns per fingerprint and the match
rate, and lists the frequent full scan that no single slow span shows.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from conftest import APPS, PG_DB, REQUIRE_SERVICES
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

from otel_dbperf.dbmonitor.filesink import JsonLinesLogExporter
from otel_dbperf.dbmonitor.statements import emit_statements
from otel_dbperf.report.cli import main
from otel_dbperf.report.workload import text_key

BIN = Path(sys.executable).parent


def _run(env: dict[str, str], *cmd: str) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=APPS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_report_joins_server_statistics_to_fingerprints(pg_sync_url: str, tmp_path: Path) -> None:
    spans, server = tmp_path / "spans.jsonl", tmp_path / "server.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_"))}
    env.update(APP_DB_URL=pg_sync_url, PYTHONUNBUFFERED="1")
    script = str(APPS / "dbsamples_workload.py")
    monitor = psycopg.connect(host="127.0.0.1", user="postgres", dbname=PG_DB, autocommit=True)
    monitor.execute("DROP TABLE IF EXISTS dbsamples_books")
    monitor.execute("CREATE TABLE dbsamples_books (id integer PRIMARY KEY, title varchar(300), stock integer)")
    monitor.execute(
        "INSERT INTO dbsamples_books SELECT g, repeat('a long title ', 20) || g, 5 FROM generate_series(1, 20000) g"
    )
    monitor.execute("ANALYZE dbsamples_books")
    if "pg_stat_statements" not in monitor.execute("SHOW shared_preload_libraries").fetchone()[0]:
        reason = "pg_stat_statements is not preloaded on the test server (scripts/test sets it up)"
        pytest.fail(reason) if REQUIRE_SERVICES else pytest.skip(reason)
    monitor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(JsonLinesLogExporter(str(server))))
    logger = provider.get_logger("otel_dbperf.dbmonitor")
    assert emit_statements(monitor, "postgresql", logger) == 0  # the baseline
    app_env = {
        **env,
        "OTEL_SERVICE_NAME": "workload",
        "OTEL_TRACES_EXPORTER": "otlp_json_file",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "DBPERF_FILE_PATH": str(spans),
        "DBPERF_SQLCOMMENTER": "true",
        "DBPERF_APP_PATHS": str(APPS),
    }
    _run(app_env, str(BIN / "opentelemetry-instrument"), str(BIN / "python"), script)
    assert emit_statements(monitor, "postgresql", logger) > 0
    monitor.close()
    provider.shutdown()

    out = io.StringIO()
    assert main(["report", str(spans), str(server), "--json", "--top", "20"], out=out) == 0
    data = json.loads(out.getvalue())
    s = data["server"]
    assert s["fingerprints"] == len(data["top_queries"]) >= 4
    assert s["matched"] == s["fingerprints"] and s["match_rate"] == 100.0, s["unmatched"]
    # PostgreSQL parses "id IN ($1)" as "id = $1": one query id, whose text is the "=" form; the
    # one-item IN-list matches by normalized text, and shows the server's calls of both statements
    assert s["matched_by_text"] == 1
    by_text = {q["statement"].split(" WHERE ")[-1]: q for q in data["top_queries"]}
    one_item, by_key = (
        by_text["dbsamples_books.id IN (%(id_1_1)s::INTEGER)"],
        by_text["dbsamples_books.id = %(pk_1)s::INTEGER"],
    )
    assert (one_item["count"], by_key["count"]) == (3, 8)
    assert one_item["server"]["calls"] == by_key["server"]["calls"] == 3 + 8
    # every other statement: one client, so the server's calls are the app's, all of them
    for q in data["top_queries"]:
        if q not in (one_item, by_key):
            assert q["server"]["calls"] == q["count"], q
    scans = s["full_scans"]
    assert scans and scans[0]["from_app"] and "LIKE" in scans[0]["statement"].upper(), scans
    assert scans[0]["code_locations"] and scans[0]["code_locations"][0].startswith(str(APPS / "dbsamples_workload.py"))

    text = io.StringIO()
    page = tmp_path / "report.html"
    assert main(["report", str(spans), str(server), "--html", str(page)], out=text) == 0
    shown = page.read_text()
    n = s["fingerprints"]
    assert f"server statistics matched {n} of {n} fingerprints (100.0%)" in shown
    assert "server: 8 calls (all clients)" in shown and "Frequent full scans" in shown
    report = text.getvalue()
    assert f"server statistics matched {n} of {n} fingerprints (100.0%)" in report
    assert "server: 8 calls (all clients)" in report
    assert "Frequent full scans" in report


@pytest.mark.parametrize(
    ("server_text", "dialect"),
    [
        (
            "SELECT `b` . `id` , `b` . `title` FROM `books` AS `b` WHERE `b` . `id` IN (...) AND `b` . `stock` > ?",
            "mysql",
        ),
        (
            "SELECT b.id, b.title FROM books AS b WHERE b.id IN ($1, $2, $3) AND b.stock > $4 /*traceparent='00-x'*/",
            "postgresql",
        ),
    ],
)
def test_text_key_ignores_the_servers_spacing_quoting_and_lists(server_text: str, dialect: str) -> None:
    app = "SELECT b.id, b.title FROM books AS b WHERE b.id IN (%(id_1_1)s, %(id_1_2)s) AND b.stock > %(stock_1)s"
    assert text_key(server_text, dialect) == text_key(app, dialect) != ""
    assert text_key(server_text.replace("stock", "price"), dialect) != text_key(app, dialect)
