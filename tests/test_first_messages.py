"""What a new user reads in their first hour (issue 24, item 5): each message says what is true.

- ``DBPERF_FILE_PATH`` in a missing directory: said once at start, never "check that the backend
  is up" about a file;
- a malformed setting names every form that is accepted (booleans: 1/0, yes/no, on/off), and a
  number must be written with ASCII digits (``1_000`` and fullwidth digits warn; spaces around a
  value are ignored);
- ``DBPERF_PROFILER_MOUNT=/`` warns instead of being dropped without a word;
- the profiler's 421 tells a loopback client on another port which ``Host`` values are served;
- the profiler documents that a query's stack is empty under the stacktrace threshold.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_dbperf.profiler import ProfilerServer, QueryHistory, start

BIN = Path(sys.executable).parent
DOCS = Path(__file__).resolve().parent.parent / "docs"

SCRIPT = """
import sqlalchemy as sa
from opentelemetry import trace

engine = sa.create_engine("sqlite://")
with engine.connect() as conn:
    conn.execute(sa.text("SELECT 1")).all()
trace.get_tracer_provider().force_flush()
"""


def test_first_run_messages(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_"))}
    env.update(
        OTEL_TRACES_EXPORTER="otlp_json_file",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        DBPERF_FILE_PATH=str(tmp_path / "no-such-dir" / "spans.jsonl"),
        DBPERF_EXPLAIN="maybe",
        DBPERF_N_PLUS_ONE_THRESHOLD="1_000",
        DBPERF_SLOW_QUERY_THRESHOLD_MS="\uff15\uff10",  # fullwidth 50
        DBPERF_STACKTRACE_MAX_FRAMES=" 5 ",  # spaces around a value: ignored, no warning
        DBPERF_PROFILER_MOUNT="/",
    )
    proc = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "script.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    text = "\n".join(lines)

    file_lines = [line for line in lines if "spans.jsonl" in line]
    assert len(file_lines) == 1 and "does not exist" in file_lines[0], text  # once, at start
    assert "backend" not in text, text
    assert not (tmp_path / "no-such-dir").exists()

    (explain,) = [line for line in lines if "DBPERF_EXPLAIN" in line]
    assert "1/0, yes/no and on/off" in explain, explain
    (n_plus_one,) = [line for line in lines if "DBPERF_N_PLUS_ONE_THRESHOLD" in line]
    assert "'1_000'" in n_plus_one and "digits 0-9" in n_plus_one and "default 5" in n_plus_one
    (slow,) = [line for line in lines if "DBPERF_SLOW_QUERY_THRESHOLD_MS" in line]
    assert "digits 0-9" in slow and "default 100" in slow
    assert "DBPERF_STACKTRACE_MAX_FRAMES" not in text
    (mount,) = [line for line in lines if "DBPERF_PROFILER_MOUNT" in line]
    assert "'/'" in mount and "using the default (unset)" in mount, mount


@pytest.fixture
def profiler() -> Iterator[ProfilerServer]:
    history = QueryHistory(10)
    history.add(0.02, "SELECT ?", slow=False)  # a fast query: no stack
    server = start("127.0.0.1:0", None, history)
    yield server
    server.stop()


def _get(server: ProfilerServer, path: str, host: str) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_421_names_the_hosts_it_serves(profiler: ProfilerServer) -> None:
    # a loopback name on another port (a port forward: ssh -L 8000:localhost:9465)
    status, body = _get(profiler, "/profiler/stats", "localhost:8000")
    assert status == 421
    message = str(body["error"]["message"])  # type: ignore[index]
    assert f"localhost:{profiler.port}" in message and f"127.0.0.1:{profiler.port}" in message, message
    assert "'localhost:8000'" in message and "DBPERF_PROFILER_TOKEN" in message, message
    assert _get(profiler, "/profiler/stats", f"localhost:{profiler.port}")[0] == 200


def test_the_stack_of_a_fast_query_is_documented_empty(profiler: ProfilerServer) -> None:
    host = f"127.0.0.1:{profiler.port}"
    status, body = _get(profiler, "/profiler/query-details/1", host)
    assert status == 200 and body["data"]["stack_trace"] == []  # type: ignore[index]
    status, document = _get(profiler, "/profiler/openapi.json", host)
    described = json.dumps(document)
    assert "DBPERF_STACKTRACE_THRESHOLD_MS" in described
    row = next(line for line in (DOCS / "profiler.md").read_text().splitlines() if "query-details/{id}` |" in line)
    assert "DBPERF_STACKTRACE_THRESHOLD_MS" in row, row
