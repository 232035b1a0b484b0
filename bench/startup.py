"""Start-up cost: a Flask + SQLAlchemy app under ``opentelemetry-instrument``, with and without otel-dbperf.

Two venvs, built once under ``.cache/startup-venvs/`` from pip's cache and kept in step with
the checkout (otel-dbperf is reinstalled from it on every run):

- ``dbperf``: ``pip install "<repo>[flask]" flask sqlalchemy``, as a user installs it;
- ``plain``: the same packages at the same versions (``pip freeze`` of the first), without
  otel-dbperf, plus ``opentelemetry-distro`` (plain OpenTelemetry's configurator): the same
  instrumentations, so the difference is what otel-dbperf itself adds (with SQLAlchemy 2.1,
  contrib's SQLAlchemy instrumentation declines to instrument there, and otel-dbperf does it:
  plain OpenTelemetry does a little less).

Each run is a fresh process started by ``opentelemetry-instrument python run.py`` (the
launcher process, then the app's: what a gunicorn/uvicorn worker pays), with the default
exporters (OTLP/HTTP to a port nothing listens on: nothing is exported during the run). The
app imports Flask and SQLAlchemy, serves one request that runs one query (Flask's test
client), prints a line and leaves with ``os._exit`` (exit is not start-up). The time is the
wall clock from spawning to that line, seen by this process. ``bare`` is the app without
``opentelemetry-instrument``. The kinds are interleaved in a shuffled order each round, so
machine noise hits them alike; medians are printed, and the ratio against plain OpenTelemetry.

Then ``python -X importtime`` runs of each (``PYTHONPROFILEIMPORTTIME=1``, which reaches both
processes) say where the import time goes: the sum of every module's own import time, per
process, otel_dbperf's own modules, and everything first imported under one of them (their
modules and what they pull in first: the SDK or SQLAlchemy modules among these are imported by
plain OpenTelemetry too, a little later). Usage::

    .venv/bin/python bench/startup.py              # 15 rounds
    .venv/bin/python bench/startup.py --rounds 30
    .venv/bin/python bench/startup.py --source /tmp/old   # another tree: git archive REV | tar -x -C /tmp/old

Figures and what they mean: docs/benchmarks.md, "Start-up".
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "startup-venvs"
APP_DEPS = ("flask", "sqlalchemy")

APP = """
import os
import sqlalchemy as sa
from flask import Flask

engine = sa.create_engine("sqlite:///" + os.environ["STARTUP_DB"])
app = Flask(__name__)


@app.get("/")
def index():
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT 1")).scalar())
"""

RUN = """
import os, sys
import app
from opentelemetry import trace
response = app.app.test_client().get("/")
provider = type(trace.get_tracer_provider()).__name__
sys.stdout.write(f"ready {response.status_code} {provider}\\n")
sys.stdout.flush()
os._exit(0)
"""


def _pip(venv: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "-q", "--disable-pip-version-check"]
        + list(args),
        check=True,
        timeout=1800,
    )


def _venv(name: str) -> Path:
    venv = CACHE / name
    if not (venv / ".built").exists():  # none yet, or a build that did not finish
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
    return venv


def build(source: Path) -> tuple[Path, Path]:
    """The two venvs (built on first use; otel-dbperf reinstalled from ``source`` every time)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    dbperf = _venv("dbperf")
    if not (dbperf / ".built").exists():
        _pip(dbperf, "install", f"{source}[flask]", *APP_DEPS)
        (dbperf / ".built").write_text("")
    else:
        _pip(dbperf, "install", "--no-deps", "--force-reinstall", str(source))
    plain = _venv("plain")
    if not (plain / ".built").exists():
        freeze = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(dbperf / "bin" / "python"), "freeze", "--all"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        pins = [line for line in freeze if line and not line.lower().startswith(("otel-dbperf", "otel_dbperf", "-e"))]
        contrib = next(line.split("==")[1] for line in pins if line.startswith("opentelemetry-instrumentation=="))
        _pip(plain, "install", *pins, f"opentelemetry-distro=={contrib}")
        (plain / ".built").write_text("")
    return dbperf, plain


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed once this returns: connections are refused


def _command(kind: str, venvs: dict[str, Path], run: Path) -> list[str]:
    venv = venvs["plain" if kind == "bare" else kind]
    python = str(venv / "bin" / "python")
    if kind == "bare":
        return [python, str(run)]
    return [str(venv / "bin" / "opentelemetry-instrument"), python, str(run)]


def _env(workdir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(
        STARTUP_DB=str(workdir / "app.db"),
        OTEL_SERVICE_NAME="startup-bench",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",  # opentelemetry-distro's default is gRPC, not installed
        OTEL_BSP_SCHEDULE_DELAY="60000",
        OTEL_METRIC_EXPORT_INTERVAL="60000",
        OTEL_BLRP_SCHEDULE_DELAY="60000",
    )
    env.update(extra)
    return env


def once(command: list[str], env: dict[str, str], cwd: Path, sdk: bool) -> tuple[float, str]:
    """Seconds from spawning ``command`` to its ready line, and its stderr (``sdk``: the SDK must be set up)."""
    with tempfile.TemporaryFile("w+") as stderr:  # not a pipe: -X importtime fills one before the ready line
        start = time.monotonic()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.monotonic() - start
        proc.communicate(timeout=120)
        stderr.seek(0)
        err = stderr.read()
    if not line.startswith("ready 200") or sdk != line.rstrip().endswith(" TracerProvider"):
        raise SystemExit(f"{' '.join(command)} did not serve its request as expected:\n{line}{err}")
    return elapsed, err


def import_profile(stderr: str) -> list[tuple[float, float, float]]:
    """Per process of a ``-X importtime`` log: ms of (all modules' own import time, otel_dbperf's own
    modules, everything first imported under an otel_dbperf module: its modules and what they pull in)."""
    processes: list[list[tuple[int, str, int]]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        if "self [us]" in line:
            processes.append([])
            continue
        own, _, name = line[len("import time:") :].split("|")
        processes[-1].append((int(own), name.strip(), len(name) - len(name.lstrip())))
    result = []
    for entries in processes:
        total = ours = under = 0
        stack: list[tuple[int, bool]] = []  # (depth, under an otel_dbperf module)
        # a module is printed after everything it imported, one level deeper: walk from the end
        for own, name, depth in reversed(entries):
            while stack and stack[-1][0] >= depth:
                stack.pop()
            mine = name.split(".")[0] == "otel_dbperf"
            inside = mine or (stack[-1][1] if stack else False)
            stack.append((depth, inside))
            total += own
            ours += own if mine else 0
            under += own if inside else 0
        result.append((total / 1000, ours / 1000, under / 1000))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--importtime", type=int, default=5, help="-X importtime runs of each")
    parser.add_argument("--source", type=Path, default=ROOT, help="the otel-dbperf tree to install (default: this one)")
    args = parser.parse_args()
    dbperf, plain = build(args.source)
    venvs = {"dbperf": dbperf, "plain": plain}
    with tempfile.TemporaryDirectory(prefix="dbperf-startup-") as tmp:
        workdir = Path(tmp)
        (workdir / "app.py").write_text(APP)
        run = workdir / "run.py"
        run.write_text(RUN)
        port = _closed_port()
        env = _env(workdir, port)
        kinds = ["bare", "plain", "dbperf"]
        for kind in kinds:  # warm the file cache and the .pyc files
            once(_command(kind, venvs, run), env, workdir, kind != "bare")
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind in random.sample(kinds, len(kinds)):
                times[kind].append(once(_command(kind, venvs, run), env, workdir, kind != "bare")[0])
        load = os.getloadavg()[0]
        median = {kind: statistics.median(values) for kind, values in times.items()}
        print(f"start-up to the first served request, median of {args.rounds} interleaved runs (load {load:.1f}):")
        for kind in kinds:
            label = {"bare": "no OpenTelemetry", "plain": "plain OpenTelemetry", "dbperf": "otel-dbperf"}[kind]
            spread = f"{min(times[kind]):.2f}-{max(times[kind]):.2f}"
            print(f"  {label:<20} {median[kind]:6.2f} s   (range {spread} s)")
        added = median["dbperf"] - median["plain"]
        print(f"  otel-dbperf over plain OpenTelemetry: {added:+.2f} s, ratio {median['dbperf'] / median['plain']:.2f}")
        plain_cost = median["plain"] - median["bare"]
        if plain_cost > 0:
            ratio = (median["dbperf"] - median["bare"]) / plain_cost
            print(f"  instrumentation cost (minus the bare app): ratio {ratio:.2f} against plain OpenTelemetry")
        print(f"\npython -X importtime (median of {args.importtime} interleaved runs each; own import times, summed):")
        profiles: dict[str, list[list[tuple[float, float, float]]]] = {"plain": [], "dbperf": []}
        for _ in range(args.importtime):
            for kind in random.sample(list(profiles), 2):
                _, err = once(_command(kind, venvs, run), {**env, "PYTHONPROFILEIMPORTTIME": "1"}, workdir, True)
                profiles[kind].append(import_profile(err))
        for kind, runs in profiles.items():
            for index, process in enumerate(("launcher", "app")):
                total, ours, under = (statistics.median(r[index][i] for r in runs) for i in range(3))
                line = f"  {kind:<6} {process:<8} process: {total:6.1f} ms"
                if kind == "dbperf":
                    line += f"; otel_dbperf's modules {ours:5.1f} ms, with what they import first {under:5.1f} ms"
                print(line)


if __name__ == "__main__":
    main()
