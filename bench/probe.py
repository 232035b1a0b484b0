"""The independent probe's setup, to explain why it and ``bench/overhead.py`` disagreed.

The probe ran a script under ``opentelemetry-instrument``: vanilla through ``opentelemetry-distro``
(SQLAlchemy 2.0, because contrib's SQLAlchemy instrumentation declares ``sqlalchemy<2.1`` and the
vanilla launcher skips 2.1), otel-dbperf through its own distro; SQLite point SELECT issued 20
frames deep, 10 per request span (or none), OTLP/HTTP protobuf to a local receiver in batches of
512, callgrind with ``PYTHONHASHSEED=0``, the garbage collector off for the request-thread figure
and on for all threads, the final flush on another thread.

Here each variant is a separate interpreter started as ``opentelemetry-instrument`` would start it
(the auto-instrumentation ``sitecustomize`` on ``PYTHONPATH``), in a venv with SQLAlchemy 2.0:

    python -m venv .venv-sa20 && .venv-sa20/bin/pip install -e . 'sqlalchemy<2.1' opentelemetry-distro==0.66b1
    python bench/overhead.py --probe [--venv .venv-sa20] [--queries 1000]

Variants: ``bare`` (no instrumentation), ``vanilla`` (contrib defaults: the old DB semconv names),
``vanilla, stable semconv`` (``OTEL_SEMCONV_STABILITY_OPT_IN=http,database``, which otel-dbperf's
distro sets: the same span attributes as otel-dbperf's spans before enrichment), ``otel-dbperf``
(defaults), and ``otel-dbperf, non-app frames`` (``DBPERF_APP_PATHS`` elsewhere: the frame walk
climbs the whole stack, the 20 frames included).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import threading
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEPTH = 20
PER_REQUEST = 10

VARIANTS: dict[str, dict[str, str] | None] = {
    "bare": None,
    "vanilla": {"OTEL_PYTHON_DISTRO": "distro", "OTEL_PYTHON_CONFIGURATOR": "configurator"},
    "vanilla, stable semconv": {
        "OTEL_PYTHON_DISTRO": "distro",
        "OTEL_PYTHON_CONFIGURATOR": "configurator",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http,database",
    },
    "otel-dbperf": {"OTEL_PYTHON_DISTRO": "otel_dbperf", "OTEL_PYTHON_CONFIGURATOR": "otel_dbperf"},
    "otel-dbperf, non-app frames": {
        "OTEL_PYTHON_DISTRO": "otel_dbperf",
        "OTEL_PYTHON_CONFIGURATOR": "otel_dbperf",
        "DBPERF_APP_PATHS": "/nonexistent-app-path",
    },
}


def _deep(depth: int, fn: Any) -> Any:
    if depth:
        return _deep(depth - 1, fn)
    return fn()


def child(n: int, requests: bool, gc_off: bool) -> int:
    """The probe's script: runs under the instrumentation its environment selects."""
    from opentelemetry import trace
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import StaticPool

    engine = create_engine("sqlite://", poolclass=StaticPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO authors VALUES (1, 'ann'), (2, 'bob')"))
    tracer = trace.get_tracer("probe")
    point = text("SELECT name FROM authors WHERE id = :id")

    def run(count: int) -> None:
        with engine.connect() as conn:
            for start in range(0, count, PER_REQUEST):
                if requests:
                    with tracer.start_as_current_span("GET /probe", kind=trace.SpanKind.SERVER):
                        for i in range(start, start + PER_REQUEST):
                            _deep(DEPTH, lambda i=i: conn.execute(point, {"id": i % 2 + 1}).scalar())
                else:
                    for i in range(start, start + PER_REQUEST):
                        _deep(DEPTH, lambda i=i: conn.execute(point, {"id": i % 2 + 1}).scalar())

    def flush() -> None:
        provider: Any = trace.get_tracer_provider()
        if hasattr(provider, "force_flush"):
            provider.force_flush()

    run(300)
    elsewhere(flush)
    if n:
        gc.collect()
        if gc_off:
            gc.disable()
        run(n)
        gc.enable()
    elsewhere(flush)
    return 0


def elsewhere(fn: Any) -> None:
    """Run ``fn`` on another thread (a flush's work is not the measured thread's)."""
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def instrumented_env(
    extra: dict[str, str] | None, port: int, venv: str, service: str, **defaults: str
) -> dict[str, str]:
    """The environment of a bench child: uninstrumented (``extra`` None), or as ``opentelemetry-instrument``
    of ``venv`` would run it, exporting traces over OTLP/HTTP to ``port``, with ``defaults`` and then
    ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_", "PYTHONPATH"))}
    env.update(PYTHONHASHSEED="0", OTEL_SERVICE_NAME=service)
    if extra is not None:
        import glob

        (auto,) = glob.glob(
            os.path.join(
                venv, "lib", "python3*", "site-packages", "opentelemetry", "instrumentation", "auto_instrumentation"
            )
        )
        env.update(
            PYTHONPATH=auto,  # what opentelemetry-instrument does before it execs the program
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_LOGS_EXPORTER="none",
            **defaults,
        )
        env.update(extra)
    return env


def callgrind(cmd: list[str], env: dict[str, str]) -> tuple[int, int]:
    """(the main thread's, every thread's) instructions of ``cmd`` under callgrind ``--separate-threads``."""
    import re

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}", *cmd],
            capture_output=True,
            env=env,
            cwd=HERE,
            text=True,
        )
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        totals = {}
        for f in os.listdir(tmp):
            with open(os.path.join(tmp, f), "rb") as fh:
                found = re.findall(rb"^totals: (\d+)", fh.read(), re.M)
            totals[f] = int(found[-1]) if found else 0
    return totals.get("cg.out-01", 0), sum(totals.values())


def probe(n: int, venv: str = os.path.join(ROOT, ".venv-sa20")) -> int:
    from overhead import Receiver

    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        print(f"no venv at {venv}: see bench/probe.py's docstring")
        return 1
    version = subprocess.run(
        [python, "-c", "import sqlalchemy; print(sqlalchemy.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    receiver = Receiver()
    counts: dict[tuple[str, bool], tuple[float, float]] = {}
    try:
        for requests in (True, False):
            for name, extra in VARIANTS.items():
                env = instrumented_env(
                    extra,
                    receiver.port,
                    venv,
                    "probe",
                    OTEL_METRICS_EXPORTER="none",
                    OTEL_BSP_MAX_EXPORT_BATCH_SIZE="512",
                )
                base = [python, os.path.abspath(__file__), "--child", "--requests" if requests else "--no-requests"]
                zero_main, zero_all = callgrind([*base, "0", "on"], env)
                off_main, _ = callgrind([*base, str(n), "off"], env)
                _, on_all = callgrind([*base, str(n), "on"], env)
                counts[name, requests] = ((off_main - zero_main) / n, (on_all - zero_all) / n)
                print(
                    f"  {'requests' if requests else 'no request'}: {name:<30}"
                    f"{counts[name, requests][0]:>10,.0f} request thread{counts[name, requests][1]:>10,.0f} all",
                    flush=True,
                )
    finally:
        receiver.close()
    print(
        f"\nprobe setup: SQLAlchemy {version} under opentelemetry-instrument, {n} queries, callgrind instructions/query"
    )
    for requests in (True, False):
        bare = counts["bare", requests]
        for ref in ("vanilla", "vanilla, stable semconv"):
            van = counts[ref, requests]
            for ours in ("otel-dbperf", "otel-dbperf, non-app frames"):
                o = counts[ours, requests]
                cells = []
                for i in (0, 1):
                    added = van[i] - bare[i]
                    cells.append(f"{(o[i] - van[i]) / added:+.1%} of {added:,.0f}")
                label = "requests  " if requests else "no request"
                print(f"  {label} {ours:<28} vs {ref:<24} request thread {cells[0]:<20} all threads {cells[1]}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(int(sys.argv[3]), sys.argv[2] == "--requests", sys.argv[4] == "off"))
    sys.exit(probe(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
