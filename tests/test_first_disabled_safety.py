"""``DBPERF_ENABLED=false`` adds nothing, but what otel-dbperf removes stays removed (issue 24, item 5).

Sanitizing statements is a safety feature: turning the enrichment off must not start exporting
the literals of every query, nor the values that error texts quote. End to end on PostgreSQL
(SQLAlchemy + psycopg) under ``opentelemetry-instrument``, spans to a live OTLP receiver.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from conftest import BIN, base_env

SECRET = "s3cret-4242"

SCRIPT = f"""
import sys
import sqlalchemy as sa
from opentelemetry import trace

engine = sa.create_engine(sys.argv[1])
with engine.begin() as conn:
    conn.execute(sa.text("DROP TABLE IF EXISTS dbperf_disabled_users"))
    conn.execute(sa.text("CREATE TABLE dbperf_disabled_users (name varchar(50) PRIMARY KEY)"))
    conn.execute(sa.text("INSERT INTO dbperf_disabled_users VALUES ('{SECRET}')"))
with engine.connect() as conn:
    conn.execute(sa.text("SELECT name FROM dbperf_disabled_users WHERE name = '{SECRET}'")).all()
    try:
        conn.execute(sa.text("INSERT INTO dbperf_disabled_users VALUES ('{SECRET}')"))
    except sa.exc.IntegrityError:
        pass
trace.get_tracer_provider().shutdown()
"""


def _run(receiver: Any, tmp_path: Path, url: str, **env: str) -> list[dict[str, Any]]:
    script = tmp_path / "disabled_app.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), str(script), url],
        cwd=tmp_path,
        env=base_env(receiver, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "otel-dbperf" not in proc.stderr, proc.stderr[-3000:]
    spans: list[dict[str, Any]] = receiver.wait_for(
        lambda s: sum("dbperf_disabled_users" in json.dumps(x) for x in s) >= 5
    )
    return spans


def test_disabled_adds_nothing_but_statements_and_errors_stay_sanitized(
    receiver: Any, tmp_path: Path, pg_sync_url: str
) -> None:
    spans = _run(receiver, tmp_path, pg_sync_url, DBPERF_ENABLED="false")
    exported = json.dumps(spans)
    assert SECRET not in exported, [s for s in spans if SECRET in json.dumps(s)][:2]
    texts = {str(s["attributes"].get("db.query.text")) for s in spans}
    assert "SELECT name FROM dbperf_disabled_users WHERE name = ?" in texts, texts
    # plain OpenTelemetry otherwise: nothing otel-dbperf adds
    assert not any(k.startswith(("dbperf.", "code.")) for s in spans for k in s["attributes"])


def test_disabled_with_sanitizing_off_exports_statements_as_recorded(
    receiver: Any, tmp_path: Path, pg_sync_url: str
) -> None:
    spans = _run(receiver, tmp_path, pg_sync_url, DBPERF_ENABLED="false", DBPERF_SANITIZE_STATEMENTS="false")
    texts = {str(s["attributes"].get("db.query.text")) for s in spans}
    assert f"SELECT name FROM dbperf_disabled_users WHERE name = '{SECRET}'" in texts, texts
