"""Venvs built the way users install otel-dbperf: a real ``pip install "<repo>[EXTRA]"`` plus only
the app's own dependencies, nothing from the test extra.

Cached under ``.cache/stock-venvs/`` (git-ignored), keyed by ``pyproject.toml``, the name, the
extra, the dependencies and the Python version, so each is built once; when otel-dbperf's own
files change, the package alone is reinstalled (every dependency already satisfied). One builder
at a time per venv (a file lock: xdist workers share the cache).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "stock-venvs"

#: the Flask app's own dependencies in a stock venv (``stock_venv("flask", "flask", FLASK_DEPS)``, shared
#: by the tests that need a Flask + SQLAlchemy app installed the way users install it)
FLASK_DEPS = ("Flask-SQLAlchemy", "gunicorn", "psycopg[binary]")

#: a Flask + SQLAlchemy app on SQLite (its database file from ``APP_DB``), imported as ``app``
FLASK_SQLITE_APP = """
import os
import sqlalchemy as sa
from flask import Flask

engine = sa.create_engine("sqlite:///" + os.environ["APP_DB"])
app = Flask(__name__)


@app.get("/")
def index():
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT 41 + 1")).scalar())
"""


def clean_env() -> dict[str, str]:
    """This process's environment without what would point a stock venv's Python elsewhere."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((REPO / "otel_dbperf").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pip *args`` on ``venv``'s Python, run by this interpreter's pip: the venvs are made without
    pip of their own (its ensurepip took 5-8 s of each build)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "-q", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=900,
    )


def stock_venv(name: str, extra: str, deps: tuple[str, ...], *, may_skip: bool = False) -> Path:
    """The cached venv of ``pip install "<repo>[extra]" *deps`` with the current otel-dbperf in it.
    A failed install fails the test; with ``may_skip`` (a dependency this machine may not build, such
    as gevent) it skips instead, unless ``DBPERF_REQUIRE_SERVICES=1``."""
    parts = [(REPO / "pyproject.toml").read_bytes(), extra.encode(), *map(str.encode, deps), sys.version.encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    venv = CACHE / f"{name}-{key}"
    requirement = f"{REPO}[{extra}]"
    CACHE.mkdir(parents=True, exist_ok=True)

    def run_pip(*args: str) -> None:
        proc = pip(venv, *args)
        if proc.returncode != 0:
            reason = f"pip {' '.join(args)} failed in {venv}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            if may_skip and os.environ.get("DBPERF_REQUIRE_SERVICES") != "1":
                pytest.skip(reason)
            pytest.fail(reason)

    with open(CACHE / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built, installed = venv / ".built", venv / ".otel-dbperf-source"
        if not built.exists():
            for old in CACHE.glob(f"{name}-*"):
                if old.is_dir():
                    shutil.rmtree(old)  # an older pyproject's venv
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
            run_pip("install", requirement, *deps)
            built.write_text(requirement + "\n" + "\n".join(deps) + "\n")
            installed.write_text(source_hash())
        elif not installed.exists() or installed.read_text() != source_hash():
            run_pip("uninstall", "-y", "otel-dbperf")
            run_pip("install", "--no-deps", requirement)
            installed.write_text(source_hash())
    return venv
