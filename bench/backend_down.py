"""Request latency and SIGTERM exit time with the telemetry backend up, refused, and hung.

Runs the Flask test app (tests/apps/flask_app.py, SQLite) unchanged under
``opentelemetry-instrument gunicorn -w 2`` with traces, metrics and logs over OTLP/HTTP
(the SDK's default timeouts and retries) to, in turn:

- ``up``: a live OTLP receiver;
- ``closed``: a port nothing listens on (connections refused);
- ``hole``: a port that accepts and never answers.

The three servers run side by side and one client interleaves its requests over them in
a shuffled order, so that machine noise hits all three alike; it times a few hundred
requests per server (p50/p99/max, ms), then sends SIGTERM to each gunicorn master in turn
and times its exit. Usage::

    .venv/bin/python bench/backend_down.py                 # 400 requests, 2 rounds
    .venv/bin/python bench/backend_down.py --requests 1000 --rounds 3

Figures and what they mean: docs/configuration.md, "When the backend is down".
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
sys.path[:0] = [str(ROOT / "tests"), str(APPS)]

from black_hole import BlackHole, closed_port  # noqa: E402
from otlp_receiver import Receiver  # noqa: E402

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as resp:
        resp.read()
        return int(resp.status)


class Server:
    """The app under ``opentelemetry-instrument gunicorn -w 2``, exporting to ``endpoint``."""

    def __init__(self, mode: str, endpoint: str, db_url: str, workdir: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_"))}
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_SERVICE_NAME="dbperf-bench",
            APP_DB_URL=db_url,
            PYTHONUNBUFFERED="1",
        )
        port = _free_port()
        self.mode, self.base = mode, f"http://127.0.0.1:{port}"
        cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "-w", "2",
               "flask_app:app"]  # fmt: skip
        self.log = open(Path(workdir) / f"server-{mode}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=APPS, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.latencies: list[float] = []

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(self.base + "/ping") == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the app did not start; see {self.log.name}") from None
                time.sleep(0.1)
        for i in range(30):  # warm-up: both workers, every code path
            _get(f"{self.base}/author/{i % 8 + 1}")

    def request(self, i: int) -> None:
        start = time.perf_counter()
        _get(f"{self.base}/author/{i % 8 + 1}")
        self.latencies.append((time.perf_counter() - start) * 1000)

    def stop(self) -> float:
        """SIGTERM to the master; seconds until it has exited."""
        start = time.monotonic()
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=120)
            return time.monotonic() - start
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.log.close()

    def figures(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {
            "p50": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "max": ordered[-1],
        }


def one_round(db_url: str, requests: int, workdir: str, rng: random.Random) -> dict[str, dict[str, float]]:
    """The three servers side by side; requests interleaved in a shuffled order, so noise hits all alike."""
    receiver, hole = Receiver(), BlackHole()
    endpoints = {"up": receiver.endpoint, "closed": f"http://127.0.0.1:{closed_port()}", "hole": hole.endpoint}
    servers = [Server(mode, endpoint, db_url, workdir) for mode, endpoint in endpoints.items()]
    try:
        for server in servers:
            server.wait_ready()
        for i in range(requests):
            order = servers[:]
            rng.shuffle(order)
            for server in order:
                server.request(i)
        results = {server.mode: server.figures() for server in servers}
        for server in servers:  # one at a time: each exit timed alone
            results[server.mode]["exit_s"] = server.stop()
        return results
    finally:
        for server in servers:
            if server.proc.poll() is None:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait()
        receiver.close()
        hole.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from models import seed
    from sqlalchemy import create_engine

    with tempfile.TemporaryDirectory() as workdir:
        db_url = f"sqlite:///{workdir}/app.db"
        seed(create_engine(db_url))
        rng = random.Random(1)
        results: dict[str, list[dict[str, float]]] = {"up": [], "closed": [], "hole": []}
        for _ in range(args.rounds):
            for mode, r in one_round(db_url, args.requests, workdir, rng).items():
                results[mode].append(r)
                print(f"  {mode:<7} p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  max {r['max']:7.2f} ms  "
                      f"exit after SIGTERM {r['exit_s']:5.2f} s", flush=True)  # fmt: skip
    print(f"\nmedians over {args.rounds} rounds of {args.requests} requests per backend (gunicorn -w 2, one client):")
    print("backend   p50 ms   p99 ms   exit s")
    for mode, rs in results.items():
        print(
            f"{mode:<8} {statistics.median(r['p50'] for r in rs):7.2f}  {statistics.median(r['p99'] for r in rs):7.2f}"
            f"  {statistics.median(r['exit_s'] for r in rs):7.2f}"
        )


if __name__ == "__main__":
    main()
