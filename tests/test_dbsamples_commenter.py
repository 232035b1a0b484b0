"""DBPERF_SQLCOMMENTER=true: the statement the server sees carries exactly one ``traceparent``.

Through opentelemetry-instrument and real drivers against real PostgreSQL: SQLAlchemy (over psycopg
and psycopg2) and plain psycopg / psycopg2 cursors. The server's own view (pg_stat_activity) is read
back by the very statement that carries the comment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent

_SCRIPT = """
import json, os
from opentelemetry import trace
Q = "select query from pg_stat_activity where pid = pg_backend_pid()"
dsn = os.environ["PROBE_DSN"]
out = {}
with trace.get_tracer("probe").start_as_current_span("request") as root:
    out["trace_id"] = format(root.get_span_context().trace_id, "032x")
    import sqlalchemy as sa
    for drv in ("psycopg", "psycopg2"):
        engine = sa.create_engine(f"postgresql+{drv}://" + dsn)
        with engine.connect() as c:
            out["sqlalchemy+" + drv] = c.execute(sa.text(Q)).scalar()
        engine.dispose()
    import psycopg
    with psycopg.connect("postgresql://" + dsn) as c:
        out["psycopg"] = c.execute(Q).fetchone()[0]
    import psycopg2
    c = psycopg2.connect("postgresql://" + dsn)
    cur = c.cursor()
    cur.execute(Q)
    out["psycopg2"] = cur.fetchone()[0]
    c.close()
print("PROBE " + json.dumps(out))
"""


def _probe(tmp_path: Path, pg_user: str, **env: str) -> dict[str, Any]:
    from conftest import PG_DB

    script = tmp_path / "probe.py"
    script.write_text(_SCRIPT)
    run_env = {
        "PATH": str(BIN),
        "PROBE_DSN": f"{pg_user}@127.0.0.1:5432/{PG_DB}",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "probe",
        **env,
    }
    proc = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), str(script)],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, proc.stdout + proc.stderr
    return dict(json.loads(lines[-1][6:]))


def test_every_postgres_driver_statement_carries_one_traceparent(tmp_path: Path, pg_user: str) -> None:
    seen = _probe(tmp_path, pg_user, DBPERF_SQLCOMMENTER="true")
    trace_id = seen.pop("trace_id")
    for stack, text in seen.items():
        assert text.count("traceparent=") == 1, (stack, text)
        assert f"traceparent='00-{trace_id}-" in text, (stack, text)
