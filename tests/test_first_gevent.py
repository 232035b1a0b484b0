"""gunicorn's gevent worker (issue 24, item 5): telemetry complete, and the messages as documented.

A side venv (``pip install "<repo>[flask]" flask sqlalchemy gunicorn gevent``, cached under
``.cache/stock-venvs/``): gevent is not in the test extra, where it would be imported by every
test that looks for it. The Flask app runs under ``opentelemetry-instrument gunicorn -k gevent``
with the environment docs/configuration.md gives; after SIGTERM the live OTLP receiver holds the
enriched spans and the metrics of the flush at exit, and stderr holds only what that section
names (its warning silenced by the documented ``PYTHONWARNINGS``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from support.stock_venv import FLASK_SQLITE_APP, stock_venv

from otel_dbperf import attributes as A

REPO = Path(__file__).resolve().parent.parent
DEPS = ("flask", "sqlalchemy", "gunicorn", "gevent")

APP = FLASK_SQLITE_APP


@pytest.fixture(scope="module")
def venv() -> Path:
    return stock_venv("gevent", "flask", DEPS, may_skip=True)


def _documented_warnings_setting() -> str:
    text = (REPO / "docs" / "configuration.md").read_text()
    assert "**gunicorn's gevent worker**" in text, "docs/configuration.md says nothing of gevent"
    section = text.split("**gunicorn's gevent worker**", 1)[1].split("\n## ", 1)[0]
    (value,) = re.findall(r'`PYTHONWARNINGS="([^"]+)"`', section)
    return value


def test_gevent_worker_exports_everything_and_says_only_what_is_documented(
    venv: Path, tmp_path: Path, receiver: Any
) -> None:
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(
        APP_DB=str(tmp_path / "app.db"),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="600000",  # nothing before exit: what arrives comes from the flush at exit
        OTEL_METRIC_EXPORT_INTERVAL="600000",
        OTEL_SERVICE_NAME="gevent-test",
        PYTHONWARNINGS=_documented_warnings_setting(),
    )
    bin_ = venv / "bin"
    cmd = [str(bin_ / "opentelemetry-instrument"), str(bin_ / "gunicorn"), "-k", "gevent", "-w", "1",
           "-b", f"127.0.0.1:{port}", "app:app"]  # fmt: skip
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60  # a hang guard
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                    assert resp.read() == b"42"
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        for _ in range(5):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                assert resp.read() == b"42"
        assert not receiver.spans
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=120)[0]

    roots = receiver.wait_for(lambda s: sum(x["kind"] == "SERVER" for x in s) >= 6)
    served = [s for s in roots if s["kind"] == "SERVER"]
    assert all(s["attributes"][A.DB_QUERY_COUNT] == 1 for s in served), [s["attributes"] for s in served]
    receiver.wait_for_metrics(lambda m: len(m) > 0)

    assert "MonkeyPatchWarning" not in output, output[-3000:]  # the documented PYTHONWARNINGS silences it
    assert "otel-dbperf" not in output, output[-3000:]  # no internal error, nothing failed
    # the rest: only the documented exit messages of the SDK's threads
    for block in output.split("Exception ignored in")[1:]:
        assert "KeyError" in block or "_removeHandlerRef" in block, block[:2000]
