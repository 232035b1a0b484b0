"""The README's Quickstart as a new user meets it (issue 24, item 5): results without a Collector,
and what a driver extra adds to a SQLAlchemy app.

The commands are the README's own, read from it and run by bash in a fresh directory (``python``,
``opentelemetry-instrument`` and ``otel-dbperf`` from this venv) on a small SQLAlchemy app.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from otel_dbperf import attributes as A

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

APP = """
import os
import sqlalchemy as sa

engine = sa.create_engine(os.environ.get("APP_DB_URL", "sqlite:///app.db"))
with engine.begin() as conn:
    conn.execute(sa.text("CREATE TABLE IF NOT EXISTS quick_items (id integer PRIMARY KEY, name varchar(50))"))
with engine.connect() as conn:
    for i in range(6):
        conn.execute(sa.text("SELECT name FROM quick_items WHERE id = :id"), {"id": i}).all()  # marker: quick
"""


def _quickstart() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OTEL_SERVICE_NAME="quickstart", **extra)
    return env


def test_the_quickstart_shows_results_without_a_collector(tmp_path: Path) -> None:
    blocks = re.findall(r"```bash\n(.*?)```", _quickstart(), re.S)
    commands = [block for block in blocks if "otel-dbperf report" in block and "opentelemetry-instrument" in block]
    assert len(commands) == 1, "the Quickstart has no way to see results without a Collector"
    (tmp_path / "app.py").write_text(APP)
    proc = subprocess.run(
        ["bash", "-e", "-c", commands[0]], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip() == "", proc.stderr[-2000:]  # no Collector, and nothing says exports fail
    assert "SELECT name FROM quick_items WHERE id = ?" in proc.stdout, proc.stdout[-3000:]
    assert "app.py:" in proc.stdout  # the line that issued it


def test_a_driver_extra_doubles_sqlalchemy_spans_and_the_readme_says_so(tmp_path: Path, pg_sync_url: str) -> None:
    # this venv has the psycopg instrumentation (what the [psycopg] extra installs)
    (tmp_path / "app.py").write_text(APP)
    spans_file = tmp_path / "spans.jsonl"
    proc = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "app.py"],
        cwd=tmp_path,
        env=_env(
            APP_DB_URL=pg_sync_url,
            OTEL_TRACES_EXPORTER="otlp_json_file",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            DBPERF_FILE_PATH=str(spans_file),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    selects: dict[str, int] = {"sqlalchemy": 0, "driver": 0}
    for line in spans_file.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    attrs = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
                    if "quick_items WHERE" not in str(attrs.get("db.query.text", attrs.get("db.statement", ""))):
                        continue
                    nested = attrs.get(A.QUERY_NESTED) is True
                    selects["driver" if nested else "sqlalchemy"] += 1
                    assert ss["scope"]["name"].endswith("psycopg" if nested else "sqlalchemy"), ss["scope"]
    assert selects == {"sqlalchemy": 6, "driver": 6}, selects  # every query twice

    quickstart = _quickstart()
    assert "for driver spans" not in quickstart  # not advertised to every app
    assert "A SQLAlchemy app does not\nneed them" in quickstart or "A SQLAlchemy app does not need them" in quickstart
    assert "exported\ntwice" in quickstart or "exported twice" in quickstart


def test_the_readme_gives_the_demo_times_measured_on_a_busy_machine() -> None:
    readme = (REPO / "README.md").read_text()
    intro = readme.split("## Reports from exported traces", 1)[0]
    assert "first runs took 32-48 s" in intro  # 32-41 s measured by a new user at a load of 4-9
    assert "the 500s are the checkout the shop's payment provider declines" in intro
