"""With no Collector running, otel-dbperf's lines are the only ones on stderr (issue 24, item 5).

The README promises one line per signal when the backend is down; the SDK's exporters also log
every failed attempt ("Transient error ... retrying", "Failed to export ... batch"), which
reach stderr through logging's last resort. While a watch reports, those are dropped; under
``DBPERF_LOG_LEVEL=DEBUG`` they are shown as before. End to end: ``opentelemetry-instrument``
on a script that queries SQLite through SQLAlchemy and logs a warning, exporting traces, metrics
and logs over OTLP/HTTP to a port nothing listens on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from black_hole import closed_port

BIN = Path(sys.executable).parent

SCRIPT = """
import logging, time
import sqlalchemy as sa

engine = sa.create_engine("sqlite://")
with engine.connect() as conn:
    for _ in range(5):
        conn.execute(sa.text("SELECT 1")).all()
logging.getLogger("app").warning("an app warning")
time.sleep(1)  # exports fail meanwhile (OTEL_EXPORTER_OTLP_TIMEOUT: 1 s of retries), or at the flush at exit
"""


def _start(tmp_path: Path, **extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_BLRP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_SERVICE_NAME="quiet-test",
        **extra,
    )
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    return subprocess.Popen(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_only_otel_dbperf_lines_when_the_backend_is_down_and_the_sdk_lines_under_debug(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = _start(tmp_path / "a")
    debug = _start(tmp_path / "b", DBPERF_LOG_LEVEL="DEBUG")
    _, err = plain.communicate(timeout=120)
    _, debug_err = debug.communicate(timeout=120)

    lines = [line for line in err.splitlines() if line.strip()]
    others = [line for line in lines if not line.startswith("otel-dbperf: ")]
    assert others == ["an app warning"], err[-3000:]  # the app's own line (logging's last resort) stays
    said = {signal for signal in ("traces", "metrics", "logs") for line in lines if f"exports of {signal} to" in line}
    assert said == {"traces", "metrics", "logs"}, err[-3000:]
    assert any("exits; failed exports dropped" in line for line in lines), err[-3000:]

    # DBPERF_LOG_LEVEL=DEBUG: the SDK's exporters speak again, beside ours
    assert "Transient error" in debug_err or "Failed to export" in debug_err, debug_err[-3000:]
    assert "otel-dbperf: exports of traces to" in debug_err
