"""How often the database monitor's statistics join the app's fingerprints, on real apps and PostgreSQL.

Runs an app under opentelemetry-instrument + gunicorn with DBPERF_SQLCOMMENTER=true against a fresh
PostgreSQL database (its own, dropped at the end), reads pg_stat_statements with
``otel_dbperf.dbmonitor.statements.emit_statements`` before and after the traffic (its records as OTLP
JSON lines), then runs ``otel-dbperf report`` on the app's spans and the monitor's records and prints
the match line, the unmatched fingerprints and the frequent full scans.

Apps: ``shop`` (the bundled demo shop, ``otel_dbperf/report/demo/shop.py``: SQLAlchemy) and ``django``
(the Django project of the tests, ``tests/apps/djsite``: Django's ORM and templates).

    python bench/dbmonitor_join.py [--app shop|django] [--db postgresql|mariadb] [--rounds 5] [--products 50000]

Needs PostgreSQL on 127.0.0.1:5432 (user postgres) with pg_stat_statements preloaded, or MariaDB on
127.0.0.1:3306 (root) with performance_schema on (scripts/test sets both up).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

from otel_dbperf.dbmonitor.filesink import JsonLinesLogExporter
from otel_dbperf.dbmonitor.statements import emit_statements
from otel_dbperf.report.cli import main as report_main
from otel_dbperf.report.demo import HERE as SHOP_DIR
from otel_dbperf.report.demo import TRAFFIC as SHOP_TRAFFIC

ROOT = Path(__file__).resolve().parent.parent
DJSITE = ROOT / "tests" / "apps" / "djsite"
BIN = Path(sys.executable).parent
DB = "dbperf_bench_join"
DJANGO_TRAFFIC = (("GET", "/questions"), ("GET", "/questions-jinja"), ("GET", "/question/1"), ("GET", "/question/3"))


def request(base: str, method: str, path: str) -> int:
    req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--app", choices=("shop", "django"), default="shop")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--products", type=int, default=50_000, help="rows of the shop's products table")
    parser.add_argument("--db", choices=("postgresql", "mariadb"), default="postgresql")
    args = parser.parse_args(argv)
    maria = args.db == "mariadb"
    if maria:
        import pymysql

        admin: Any = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {DB}")
        admin.cursor().execute(f"CREATE DATABASE {DB}")
    else:
        admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    out = Path(tempfile.mkdtemp(prefix="dbmonitor-join-"))
    spans, server = out / "spans.jsonl", out / "server.jsonl"
    url = (
        f"mysql+pymysql://root:@127.0.0.1:3306/{DB}" if maria else f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_"))}
    env.update(SHOP_DB_URL=url, APP_DB_URL=url, DJANGO_SETTINGS_MODULE="djsite.settings")
    if args.app == "shop":
        subprocess.run([sys.executable, str(SHOP_DIR / "shop.py"), str(args.products)], env=env, check=True)
        cwd, wsgi, traffic = SHOP_DIR, "shop:app", SHOP_TRAFFIC
    else:
        subprocess.run([sys.executable, "manage.py", "seed"], cwd=DJSITE, env=env, check=True)
        cwd, wsgi, traffic = DJSITE, "djsite.wsgi:application", DJANGO_TRAFFIC
    dialect = "mysql" if maria else "postgresql"
    if maria:
        monitor: Any = pymysql.connect(host="127.0.0.1", user="root", password="", database=DB, autocommit=True)
    else:
        monitor = psycopg.connect(host="127.0.0.1", user="postgres", dbname=DB, autocommit=True)
        monitor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(JsonLinesLogExporter(str(server))))
    logger = provider.get_logger("otel_dbperf.dbmonitor")
    emit_statements(monitor, dialect, logger)  # the baseline
    port = free_port()
    app_env = {
        **env,
        "OTEL_SERVICE_NAME": f"bench-{args.app}",
        "OTEL_TRACES_EXPORTER": "otlp_json_file",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "DBPERF_FILE_PATH": str(spans),
        "DBPERF_SQLCOMMENTER": "true",
        "DBPERF_APP_PATHS": str(cwd),
    }
    server_proc = subprocess.Popen(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "-w", "2", wsgi],
        cwd=cwd,
        env=app_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if request(base, "GET", "/health" if args.app == "shop" else "/ping") == 200:
                    break
            except OSError:
                time.sleep(0.2)
        statuses: dict[int, int] = {}
        for i in range(args.rounds * len(traffic)):
            code = request(base, *traffic[i % len(traffic)])
            statuses[code] = statuses.get(code, 0) + 1
    finally:
        os.killpg(server_proc.pid, signal.SIGTERM)
        server_proc.wait(timeout=60)
    emitted = emit_statements(monitor, dialect, logger)
    monitor.close()
    provider.shutdown()
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {DB}" + ("" if maria else " WITH (FORCE)"))
    admin.close()
    print(f"app {args.app} on {args.db}: responses {statuses}; {emitted} db.server.top_query records; files in {out}")
    buf = io.StringIO()
    report_main(["report", str(spans), str(server), "--json", "--top", "1000"], out=buf)
    data = json.loads(buf.getvalue())
    s = data["server"]
    print(
        f"server statistics matched {s['matched']} of {s['fingerprints']} fingerprints ({s['match_rate']:.1f}%), "
        f"{s['matched_by_text']} by normalized text"
    )
    for u in s["unmatched"]:
        print(f"  unmatched: {u['count']}x {u['statement'][:160]}")
    print(f"  not from the app's spans: {s['other_clients']}")
    for e in s["full_scans"]:
        print(f"  full scan: {e['summary']} {e['why']} (from the app: {e['from_app']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
