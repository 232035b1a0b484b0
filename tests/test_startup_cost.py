"""Start-up cost: a process imports only the otel-dbperf parts it meets (issue 24, item 4).

Under ``uvicorn --workers 2`` every worker pays otel-dbperf's start-up, and uvicorn's worker
health check kills a worker still importing. So ``opentelemetry-instrument``'s launcher
process (which imports the package only to read ``_launcher``) must not import the span
pipeline, and the app's process must not import what it may never use (EXPLAIN, the profiler,
the report) nor compile the statement lexers of dialects it never meets. Asserted on which
modules and lexers a process holds, never on a timing; the time figures are
``bench/startup.py``'s.

Run in a stock venv: ``pip install "<repo>[flask]" Flask-SQLAlchemy gunicorn psycopg[binary]`` and nothing
else (test_stock_install.py's Flask venv), cached
under ``.cache/stock-venvs/`` (keyed by pyproject.toml, the dependencies and the Python version;
otel-dbperf alone is reinstalled when its files change).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.stock_venv import FLASK_DEPS, FLASK_SQLITE_APP, stock_venv

REPO = Path(__file__).resolve().parent.parent

APP = FLASK_SQLITE_APP

RUN = """
import json, sys
import app
from opentelemetry import trace


def ours():
    return sorted(name for name in sys.modules if name.split(".")[0] == "otel_dbperf")


def lexers():
    sql = sys.modules.get("otel_dbperf._sql")
    return sql.compiled_lexers() if sql is not None else []


started, started_lexers = ours(), lexers()
status = app.app.test_client().get("/").status_code
trace.get_tracer_provider().force_flush()
print(json.dumps({"started": started, "started_lexers": started_lexers, "status": status, "lexers": lexers()}))
"""


@pytest.fixture(scope="module")
def venv() -> Path:
    """test_stock_install.py's Flask venv: ``pip install "<repo>[flask]"`` and the app's own dependencies."""
    return stock_venv("flask", "flask", FLASK_DEPS)  # test_stock_install.py's


def _imported_per_process(importtime: str) -> list[set[str]]:
    """The modules each process of a ``-X importtime`` log imported (one header line per process)."""
    processes: list[set[str]] = []
    for line in importtime.splitlines():
        if not line.startswith("import time:"):
            continue
        if "self [us]" in line:
            processes.append(set())
        elif processes:
            processes[-1].add(line.rsplit("|", 1)[1].strip())
    return processes


def test_a_process_imports_only_what_it_meets(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "run.py").write_text(RUN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(
        APP_DB=str(tmp_path / "app.db"),
        PYTHONPROFILEIMPORTTIME="1",  # python -X importtime, in the launcher's process and the app's
        OTEL_TRACES_EXPORTER="otlp_json_file",
        DBPERF_FILE_PATH=str(tmp_path / "spans.jsonl"),
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    proc = subprocess.run(
        [str(venv / "bin" / "opentelemetry-instrument"), str(venv / "bin" / "python"), "run.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    launcher, app = _imported_per_process(proc.stderr)
    # the launcher reads two environment defaults from _launcher: none of the pipeline
    imported = {m for m in launcher if m.split(".")[0] == "otel_dbperf"}
    assert imported <= {"otel_dbperf", "otel_dbperf._launcher", "otel_dbperf._version"}, sorted(imported)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["status"] == 200
    assert '"SELECT ? + ?"' in (tmp_path / "spans.jsonl").read_text()  # the query was traced and enriched
    assert "otel_dbperf._pipeline" in app and "otel_dbperf._pipeline" in result["started"]

    never_met = ("otel_dbperf._sqla.explain", "otel_dbperf.profiler", "otel_dbperf.report")
    assert [m for m in result["started"] if m.startswith(never_met)] == []
    # statement lexers: none at start-up; after one SQLite query, SQLite's alone
    assert result["started_lexers"] == []
    assert result["lexers"] == ["sqlite"]
