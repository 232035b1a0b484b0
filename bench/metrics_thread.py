"""What metrics cost on the request thread: vanilla OTel and otel-dbperf, each with metrics off and on.

Design.md section 6: with metrics on in both, otel-dbperf may add nothing on the request thread
beyond what vanilla's own metrics add. Workload: a Flask app under ``opentelemetry-instrument``
(the auto-instrumentation ``sitecustomize`` on ``PYTHONPATH``, as the launcher sets it), each
request an N+1 of 10 point SELECTs through SQLAlchemy and psycopg on PostgreSQL, served through
Flask's test client (the WSGI path, no socket), traces and metrics exported over OTLP/HTTP
protobuf to a local receiver that discards them. Each variant runs in its own interpreter under
callgrind (``--separate-threads``, ``PYTHONHASHSEED=0``): the main thread's instructions with the
measured loop minus without it, the garbage collector off during the loop, the final flush on
another thread. Variants:

- ``bare``: no instrumentation (the floor vanilla's added cost is measured from);
- ``vanilla``: ``opentelemetry-distro``'s distro and configurator, contrib's defaults;
- ``otel-dbperf``: its own distro and configurator, with the distro's environment defaults (among
  them ``OTEL_SEMCONV_STABILITY_OPT_IN=http,database``);

each with ``OTEL_METRICS_EXPORTER=none`` (metrics off) and ``otlp`` (on). Contrib's SQLAlchemy
instrumentation declares ``sqlalchemy<2.1`` and vanilla's launcher skips it on 2.1, so this runs
in a venv with SQLAlchemy 2.0 (both sides in the same venv):

    python -m venv .venv-sa20 && .venv-sa20/bin/pip install -e ".[test]" 'sqlalchemy<2.1' opentelemetry-distro==0.66b1
    python bench/metrics_thread.py [--venv .venv-sa20] [--requests 100]
    python bench/metrics_thread.py --count      # the metric measurements one request makes, by instrument

Needs PostgreSQL at ``BENCH_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

from probe import callgrind, elsewhere, instrumented_env  # bench/probe.py: the same child set-up


def callgrind_main(cmd: list[str], env: dict[str, str]) -> int:
    """The main thread's instructions of ``cmd`` under callgrind."""
    return callgrind(cmd, env)[0]


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QUERIES = 10
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WARMUP = 30

VANILLA = {"OTEL_PYTHON_DISTRO": "distro", "OTEL_PYTHON_CONFIGURATOR": "configurator"}
OURS = {"OTEL_PYTHON_DISTRO": "otel_dbperf", "OTEL_PYTHON_CONFIGURATOR": "otel_dbperf"}
VARIANTS: dict[str, dict[str, str] | None] = {
    "bare": None,
    "vanilla, metrics off": {**VANILLA, "OTEL_METRICS_EXPORTER": "none"},
    "vanilla, metrics on": {**VANILLA, "OTEL_METRICS_EXPORTER": "otlp"},
    "otel-dbperf, metrics off": {**OURS, "OTEL_METRICS_EXPORTER": "none"},
    "otel-dbperf, metrics on": {**OURS, "OTEL_METRICS_EXPORTER": "otlp"},
}


# --------------------------------------------------------------------------- the app (child process)


def make_app() -> tuple[Any, Any]:
    from flask import Flask
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_URL, pool_size=2)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_mt_authors (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("DELETE FROM bench_mt_authors"))
        conn.execute(text("INSERT INTO bench_mt_authors VALUES (1, 'ann'), (2, 'bob'), (3, 'cid')"))
    point = text("SELECT name FROM bench_mt_authors WHERE id = :id")
    app = Flask(__name__)

    @app.route("/authors/<int:first>")
    def authors(first: int) -> dict[str, Any]:
        with engine.connect() as conn:  # a pool checkout per request, then an N+1
            names = [conn.execute(point, {"id": (first + i) % 3 + 1}).scalar() for i in range(QUERIES)]
        return {"names": names}

    return app, engine


def child(n: int, count: bool) -> int:
    app, _engine = make_app()
    client = app.test_client()
    counted: Counter[tuple[str, str, str]] = Counter()
    if count:
        _count_measurements(counted)

    def run(requests: int) -> None:
        for i in range(requests):
            response = client.get(f"/authors/{i % 3}")
            assert response.status_code == 200, response.status_code

    run(WARMUP)
    elsewhere(_flush)
    counted.clear()
    gc.collect()  # in the run without the loop too: its cost depends on the heap, not on the loop
    gc.disable()
    run(n)
    gc.enable()
    elsewhere(_flush)
    if count:
        for (scope, name, how), k in sorted(counted.items()):
            print(f"{k / max(n, 1):6.1f}  {how:<7} {name:<45} {scope}")
        print(f"{sum(counted.values()) / max(n, 1):6.1f}  per request on the request thread")
    return 0


def _count_measurements(counted: Counter[tuple[str, str, str]]) -> None:
    """Counts every synchronous measurement the SDK takes on the main thread, by instrument."""
    try:
        from opentelemetry.sdk.metrics._internal import instrument
    except ImportError:
        return
    main = threading.main_thread()
    for cls, method in ((instrument.Histogram, "record"), (instrument.Counter, "add"),
                        (instrument.UpDownCounter, "add"), (instrument.Gauge, "set")):  # fmt: skip
        original = getattr(cls, method)

        def counting(self: Any, *args: Any, _original: Any = original, _how: str = method, **kwargs: Any) -> Any:
            if threading.current_thread() is main:
                counted[self.instrumentation_scope.name, self.name, _how] += 1
            return _original(self, *args, **kwargs)

        setattr(cls, method, counting)


def _flush() -> None:
    from opentelemetry import metrics, trace

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        if hasattr(provider, "force_flush"):
            provider.force_flush()


# --------------------------------------------------------------------------- the runs (parent)


def measure(venv: str, n: int, only: list[str]) -> dict[str, float]:
    sys.path.insert(0, HERE)
    from overhead import Receiver

    python = os.path.join(venv, "bin", "python")
    receiver = Receiver()
    per_query: dict[str, float] = {}
    try:
        for name, extra in VARIANTS.items():
            if only and name not in only and name != "bare":
                continue
            env = instrumented_env(extra, receiver.port, venv, "metrics-thread")
            base = [python, os.path.abspath(__file__), "--child"]
            zero = callgrind_main([*base, "0"], env)
            loop = callgrind_main([*base, str(n)], env)
            per_query[name] = (loop - zero) / (n * QUERIES)
            print(f"  {name:<28}{per_query[name]:>10,.0f} instructions per query (request thread)", flush=True)
    finally:
        receiver.close()
    return per_query


def report(q: dict[str, float]) -> None:
    bare = q["bare"]
    print(f"\nrequest thread, callgrind instructions per query ({QUERIES} per request), added over bare:")
    for name in VARIANTS:
        if name != "bare" and name in q:
            print(f"  {name:<28}{q[name] - bare:>+10,.0f}")
    if all(name in q for name in VARIANTS):
        van = q["vanilla, metrics on"] - q["vanilla, metrics off"]
        ours = q["otel-dbperf, metrics on"] - q["otel-dbperf, metrics off"]
        added = q["vanilla, metrics off"] - bare
        print(f"metrics on minus off: vanilla {van:+,.0f} ({van / added:+.1%} of vanilla tracing's added"
              f" {added:,.0f}), otel-dbperf {ours:+,.0f} ({ours / added:+.1%}); otel-dbperf's beyond vanilla's:"
              f" {ours - van:+,.0f} per query ({(ours - van) / added:+.1%})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", default=os.path.join(ROOT, ".venv-sa20"))
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--count", action="store_true", help="the measurements per request, by instrument")
    parser.add_argument("--only", action="append", default=[], help="a variant's name (repeatable)")
    args = parser.parse_args()
    python = os.path.join(args.venv, "bin", "python")
    if not os.path.exists(python):
        print(f"no venv at {args.venv}: see this script's docstring")
        return 1
    if args.count:
        sys.path.insert(0, HERE)
        from overhead import Receiver

        receiver = Receiver()
        try:
            for name, extra in VARIANTS.items():
                if name == "bare" or (args.only and name not in args.only):
                    continue
                print(f"{name}:", flush=True)
                env = instrumented_env(extra, receiver.port, args.venv, "metrics-thread")
                subprocess.run([python, os.path.abspath(__file__), "--child", "20", "--count"], env=env, check=True)
        finally:
            receiver.close()
        return 0
    report(measure(args.venv, args.requests, args.only))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(int(sys.argv[2]), "--count" in sys.argv))
    sys.exit(main())
