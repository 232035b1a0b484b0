"""``otel-dbperf demo``: the bundled shop under opentelemetry-instrument, traffic, and the report.

No servers beyond the app itself and no network: SQLite for the database and
OTLP JSON lines in a local file for the spans. ``SHOP_VARIANT`` in the environment reaches the
shop (see ``shop.py``): runs with its N+1 fixed or a new slow query, for ``report --baseline``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..console import progress

HERE = Path(__file__).resolve().parent
TRAFFIC: tuple[tuple[str, str], ...] = (
    ("GET", "/products/1"),
    ("GET", "/search?q=titanium"),  # matches nothing: every description is read to its end
    ("GET", "/orders"),
    ("POST", "/checkout/3"),
    ("GET", "/products/2"),
    ("GET", "/search?q=oak"),
    ("POST", "/checkout/5"),  # declined by the payment provider (shop.py): one 500 per round
    ("GET", "/products/3"),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _request(base: str, method: str, path: str) -> int:
    req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def run(out_dir: str, rounds: int, products: int, stream: TextIO = sys.stderr) -> Path | None:
    """Run the demo; returns the spans file, or None (with the reason printed) when it cannot run."""
    missing = [m for m in ("flask", "gunicorn") if not _importable(m)]
    instrument, gunicorn = _tool("opentelemetry-instrument"), _tool("gunicorn")
    if missing or not instrument or not gunicorn:
        print(
            f"otel-dbperf demo needs {', '.join(missing) or 'gunicorn'}: pip install 'otel-dbperf[demo]'", file=stream
        )
        return None
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    spans, database = out / "spans.jsonl", out / "shop.db"
    spans.unlink(missing_ok=True)
    env = {
        **os.environ,
        "SHOP_DB_URL": f"sqlite:///{database}",
        "OTEL_SERVICE_NAME": "dbperf-demo-shop",
        "OTEL_TRACES_EXPORTER": "otlp_json_file",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "DBPERF_FILE_PATH": str(spans),
        "DBPERF_APP_PATHS": str(HERE),  # the shop is application code even from site-packages
    }
    env.setdefault("DBPERF_SLOW_QUERY_THRESHOLD_MS", "50")
    print(f"seeding SQLite with {products} products in {database}", file=stream)
    subprocess.run([sys.executable, str(HERE / "shop.py"), str(products)], env=env, check=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(out / "server.log", "w")  # noqa: SIM115 - closed below
    print(f"starting the shop under opentelemetry-instrument + gunicorn on {base}", file=stream)
    threshold = env["DBPERF_SLOW_QUERY_THRESHOLD_MS"]
    print(
        f"slow-query threshold {threshold} ms (DBPERF_SLOW_QUERY_THRESHOLD_MS; the demo's default is 50, "
        "otel-dbperf's 100): queries at or over it are flagged slow",
        file=stream,
    )
    server = subprocess.Popen(
        [instrument, gunicorn, "-b", f"127.0.0.1:{port}", "-w", "2", "--chdir", str(HERE), "shop:app"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_ready(base, server)
        total = rounds * len(TRAFFIC)
        statuses: dict[int, int] = {}
        for i in range(total):
            method, path = TRAFFIC[i % len(TRAFFIC)]
            code = _request(base, method, path)
            statuses[code] = statuses.get(code, 0) + 1
            progress(i + 1, total, stream, "traffic")
        said = ", ".join(f"{n}x {code}" for code, n in sorted(statuses.items()))
        if statuses.get(500):  # the checkout of a declined customer, on purpose (shop.py)
            said += " (each 500: the shop's payment provider declines customer 5's checkout, on purpose)"
        print("responses: " + said, file=stream)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.close()
    return spans


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the demo server exited; see server.log in the output folder")
        try:
            if _request(base, "GET", "/health") == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the demo server did not start within 60 s; see server.log in the output folder")


def main(argv: Sequence[str]) -> Path | None:
    """``otel-dbperf demo [options]``: the spans file, for the report; None when it could not run."""
    import argparse

    parser = argparse.ArgumentParser(prog="otel-dbperf demo")
    parser.add_argument("--out", default="dbperf-demo", help="folder for the database, spans and server log")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of traffic over the routes (default 5)")
    parser.add_argument("--products", type=int, default=400_000, help="rows in the searched table")
    args = parser.parse_args(argv)
    return run(args.out, args.rounds, args.products)
