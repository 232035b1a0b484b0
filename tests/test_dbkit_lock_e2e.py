"""A lock wait between two requests on real PostgreSQL, found in the kit's backends and linked to both
requests' traces: the issue's "done when", on the kit built from source and the shipped configs.

One set of backend processes for the module, every one on free loopback ports from its config's own
placeholders; per database server, its own monitor and app:

    app (tests/apps/dbsamples_lock_app.py, opentelemetry-instrument, DBPERF_SQLCOMMENTER=true)
        -> Collector on collector/otelcol.yaml (traces) -> Jaeger v2 (collector/jaeger.yaml)
    otel-dbperf dbmonitor (DBPERF_DBMONITOR_DSN_FILE)
        -> Collector on collector/dbhost.yaml -> (logs upstream) the otelcol.yaml Collector
        -> the Loki stand-in (collector/kit-loki.yaml, a file of OTLP JSON lines)

PostgreSQL: the waiter's sample names the waiter's trace and the blocker's pid, whose sample names the
blocker's trace. MariaDB shows no statement for a thread sleeping inside its transaction: the waiter's
sample names the waiter's trace and the blocker's thread id, whose sample has no statement or link.

Tail sampling keeps every trace here (baseline share 100 %, a 1 s decision wait): both requests last
until the samples are in the log backend, longer than the decision wait, and a trace decided before its
server span arrives is kept whole only when it was kept at its first decision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import psycopg
import pytest
from conftest import (
    MARIA_DB,
    MARIA_URL,
    PG_DB,
    PG_HOST,
    PG_PORT,
    base_env,
    free_port,
    get,
    kit_binary,
    maria_connect,
    serve,
    wait_for,
)
from otlp_receiver import Receiver

ROOT = Path(__file__).parent.parent
COLLECTOR = ROOT / "collector"
SERVICE = "dbperf-dbkit-lock"
SECRET = "s3cr3t-lock-value"  # tests/apps/dbsamples_lock_app.py's literal
WAIT = 120.0  # hang guard on a loaded machine, never a verdict

pytestmark = pytest.mark.services


def _addr() -> str:
    return f"127.0.0.1:{free_port()}"


def _clean_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL", "JAEGER_", "LOKI_", "UPSTREAM_", "DBPERF_"))
    }


@contextmanager
def _process(name: str, cmd: list[str], env: dict[str, str], tmp: Path, health: str | None) -> Iterator[None]:
    log = open(tmp / f"{name}.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        if health:

            def ready() -> bool:
                if proc.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"{name} exited: {log.read()[-4000:]}")
                return get(health, timeout=5)[0] == 200

            wait_for(f"{name} at {health}", ready)
        yield
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"{name} exited: {log.read()[-4000:]}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _records(path: Path) -> list[dict[str, Any]]:
    """The log records of the Loki stand-in's file (OTLP JSON lines), attributes flattened."""
    out = []
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        for rl in json.loads(line)["resourceLogs"]:
            for sl in rl["scopeLogs"]:
                for r in sl["logRecords"]:
                    attrs = {a["key"]: a["value"] for a in r.get("attributes", [])}
                    out.append({**r, "attrs": attrs})
    return out


def _str(record: dict[str, Any], key: str) -> str:
    return str(record["attrs"].get(key, {}).get("stringValue", ""))


def _int(value: dict[str, Any]) -> int:
    return int(value["intValue"])


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Jaeger, the Loki stand-in, the central Collector (otelcol.yaml) and the database host's
    (dbhost.yaml, its logs upstream to the central one), on the shipped configs."""
    otelcol, jaeger = kit_binary("otelcol-dbperf"), kit_binary("jaeger")
    tmp = tmp_path_factory.mktemp("dbkit")
    jaeger_env = {
        **_clean_env(),
        "JAEGER_OTLP_GRPC_ENDPOINT": _addr(),
        "JAEGER_TELEMETRY_HOST": "127.0.0.1",
        "JAEGER_QUERY_HTTP_ENDPOINT": _addr(),
        "JAEGER_QUERY_GRPC_ENDPOINT": _addr(),
        "JAEGER_HEALTH_ENDPOINT": _addr(),
        "JAEGER_TELEMETRY_PORT": str(free_port()),
    }
    loki_file = tmp / "loki" / "logs.jsonl"
    loki_env = {
        **_clean_env(),
        "LOKI_STANDIN_ENDPOINT": _addr(),
        "LOKI_STANDIN_HEALTH_ENDPOINT": _addr(),
        "LOKI_STANDIN_FILE": str(loki_file),
    }

    def collector_env(name: str, **given: str) -> dict[str, str]:
        return {
            **_clean_env(),
            "OTELCOL_OTLP_GRPC_ENDPOINT": _addr(),
            "OTELCOL_OTLP_HTTP_ENDPOINT": _addr(),
            "OTELCOL_HEALTH_ENDPOINT": _addr(),
            "OTELCOL_ZPAGES_ENDPOINT": _addr(),
            "OTELCOL_PROMETHEUS_ENDPOINT": _addr(),
            "OTELCOL_TELEMETRY_HOST": "127.0.0.1",
            "OTELCOL_TELEMETRY_PORT": str(free_port()),
            "OTELCOL_QUEUE_DIR": str(tmp / f"{name}-queue"),
            "OTELCOL_BATCH_TIMEOUT": "200ms",
            **given,
        }

    main_env = collector_env(
        "otelcol",
        JAEGER_OTLP_ENDPOINT=jaeger_env["JAEGER_OTLP_GRPC_ENDPOINT"],
        LOKI_OTLP_ENDPOINT=f"http://{loki_env['LOKI_STANDIN_ENDPOINT']}/otlp",
        OTELCOL_TAIL_DECISION_WAIT="1s",
        OTELCOL_BASELINE_SAMPLE_PERCENT="100",
    )
    dbhost_env = collector_env(
        "dbhost", UPSTREAM_OTLP_ENDPOINT=main_env["OTELCOL_OTLP_GRPC_ENDPOINT"], OTELCOL_HOSTMETRICS_INTERVAL="60s"
    )
    jaeger_api = f"http://{jaeger_env['JAEGER_QUERY_HTTP_ENDPOINT']}"
    with ExitStack() as stack:
        for name, config, env, health in (
            ("jaeger", "jaeger.yaml", jaeger_env, f"{jaeger_api}/api/services"),
            ("loki", "kit-loki.yaml", loki_env, f"http://{loki_env['LOKI_STANDIN_HEALTH_ENDPOINT']}/"),
            ("otelcol", "otelcol.yaml", main_env, f"http://{main_env['OTELCOL_HEALTH_ENDPOINT']}/"),
            ("dbhost", "dbhost.yaml", dbhost_env, f"http://{dbhost_env['OTELCOL_HEALTH_ENDPOINT']}/"),
        ):
            exe = jaeger if name == "jaeger" else otelcol
            stack.enter_context(_process(name, [str(exe), f"--config={COLLECTOR / config}"], env, tmp, health))
        yield {
            "tmp": tmp,
            "loki_file": loki_file,
            "jaeger": jaeger_api,
            "app_otlp": f"http://{main_env['OTELCOL_OTLP_HTTP_ENDPOINT']}",
            "monitor_otlp": f"http://{dbhost_env['OTELCOL_OTLP_HTTP_ENDPOINT']}",
        }


Samples = tuple[dict[str, Any], dict[str, Any]]


def _lock_wait(
    kit: dict[str, Any],
    name: str,
    monitor_dsn: dict[str, str],
    app_db_url: str,
    held: Callable[[], bool],
    waits: Callable[[], bool],
    samples: Callable[[list[dict[str, Any]]], Samples | None],
) -> Samples:
    """The monitor (``monitor_dsn``: its DSN variable) and the app for one server; /hold, then /wait
    on the same row; the waiting and the blocking sessions' samples of one round, found in the log
    backend (``samples`` picks them) while the requests wait; then /release."""
    monitor_env = {
        **_clean_env(),
        "OTEL_EXPORTER_OTLP_ENDPOINT": kit["monitor_otlp"],
        "OTEL_SERVICE_NAME": f"dbperf-dbkit-monitor-{name}",
        "DBPERF_DBMONITOR_INTERVAL": "60",
        "DBPERF_DBMONITOR_SAMPLE_INTERVAL": "1",
        "DBPERF_DBMONITOR_STATEMENTS_INTERVAL": "0",
        **monitor_dsn,
    }
    app_env = base_env(
        cast(Receiver, SimpleNamespace(endpoint=kit["app_otlp"])),
        APP_DB_URL=app_db_url,
        DBPERF_SQLCOMMENTER="true",
        OTEL_SERVICE_NAME=SERVICE,
    )
    command = [sys.executable, "-m", "otel_dbperf.report.cli", "dbmonitor"]
    with ExitStack() as stack:
        stack.enter_context(_process(f"dbmonitor-{name}", command, monitor_env, kit["tmp"], None))
        srv = stack.enter_context(
            serve("gunicorn", "dbsamples_lock_app:app", app_env, "-w", "1", "-k", "gthread", "--threads", "4")
        )
        results: dict[str, int] = {}
        hold = threading.Thread(target=lambda: results.setdefault("hold", get(srv["url"] + "/hold")[0]))
        waiter = threading.Thread(target=lambda: results.setdefault("wait", get(srv["url"] + "/wait")[0]))
        hold.start()
        try:
            wait_for("the row lock held", held)
            waiter.start()
            wait_for("the lock wait", waits)
            found = wait_for("the lock wait's samples in the log backend", lambda: samples(_records(kit["loki_file"])))
        finally:
            get(srv["url"] + "/release")
            hold.join(60)
            if waiter.ident is not None:
                waiter.join(60)
        assert results == {"hold": 200, "wait": 200}
    text = kit["loki_file"].read_text()
    # no literal of the app's statements (the row's name, its id 7, the increment 1), nor the comment
    assert SECRET not in text and "traceparent" not in text
    assert "= 7" not in text and "n + 1" not in text
    return found


def _jaeger_trace(kit: dict[str, Any], sample: dict[str, Any], route: str) -> dict[str, Any]:
    """The sample's trace in Jaeger, once it holds its server span and the sample's span: the request
    ``route`` of the app's service."""

    def probe() -> dict[str, Any] | None:
        status, body = get(f"{kit['jaeger']}/api/traces/{sample['traceId']}", timeout=10)
        data = json.loads(body)["data"] if status == 200 else None
        if not data:
            return None
        ids = {s["spanID"] for s in data[0]["spans"]}
        kinds = {_tags(s).get("span.kind") for s in data[0]["spans"]}
        return cast(dict[str, Any], data[0]) if sample["spanId"] in ids and "server" in kinds else None

    found = wait_for(f"trace {sample['traceId']} ({route}) in Jaeger", probe)
    servers = [s for s in found["spans"] if _tags(s).get("span.kind") == "server"]
    assert [s["operationName"] for s in servers] == [f"GET {route}"], [s["operationName"] for s in found["spans"]]
    assert found["processes"][servers[0]["processID"]]["serviceName"] == SERVICE
    return found


def _span(trace: dict[str, Any], span_id: str) -> dict[str, Any]:
    (span,) = [s for s in trace["spans"] if s["spanID"] == span_id]
    return _tags(span)


def test_postgresql_lock_wait_in_the_log_backend_links_both_requests_traces_in_jaeger(
    kit: dict[str, Any], pg_user: str
) -> None:
    dsn_file = kit["tmp"] / "pg-dsn"
    dsn_file.write_text(f"postgresql://{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}\n")
    monitor = psycopg.connect(host=PG_HOST, port=PG_PORT, user=pg_user, dbname=PG_DB, autocommit=True)

    def sessions(condition: str) -> bool:
        query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND " + condition
        return bool(monitor.execute(query).fetchall())

    def samples(records: list[dict[str, Any]]) -> Samples | None:
        mine = [
            r
            for r in records
            if _str(r, "event.name") == "db.server.query_sample"
            and _str(r, "db.namespace") == PG_DB
            and _str(r, "db.system.name") == "postgresql"
        ]
        for waiting in mine:
            if _str(waiting, "postgresql.wait_event_type") != "Lock" or not waiting.get("traceId"):
                continue
            blockers = {_int(v) for v in waiting["attrs"]["postgresql.blocking_pids"]["arrayValue"]["values"]}
            for blocking in mine:
                if (
                    blocking.get("traceId")
                    and _int(blocking["attrs"]["postgresql.pid"]) in blockers
                    and blocking["timeUnixNano"] == waiting["timeUnixNano"]
                ):
                    return waiting, blocking
        return None

    try:
        waiting, blocking = _lock_wait(
            kit,
            "pg",
            {"DBPERF_DBMONITOR_DSN_FILE": str(dsn_file)},
            f"postgresql+psycopg://{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}",
            lambda: sessions("state = 'idle in transaction' AND query LIKE '%FOR UPDATE%'"),
            lambda: sessions("wait_event_type = 'Lock' AND query LIKE 'UPDATE dbsamples_stock%'"),
            samples,
        )
    finally:
        monitor.close()
    # the waiter's sample: its trace and span, waiting on a lock, naming the blocker's pid (samples())
    assert waiting["traceId"] != blocking["traceId"]
    assert _str(waiting, "db.query.text") == "UPDATE dbsamples_stock SET n = n + ? WHERE id = ? AND name = ?"
    assert _str(blocking, "postgresql.state") == "idle in transaction"
    assert _str(blocking, "db.query.text") == "SELECT n FROM dbsamples_stock WHERE id = ? AND name = ? FOR UPDATE"
    # both traces in Jaeger, the samples' spans the queries' spans of those requests
    update = _span(_jaeger_trace(kit, waiting, "/wait"), waiting["spanId"])
    assert str(update.get("db.query.text", "")).startswith("UPDATE dbsamples_stock"), update
    lock = _span(_jaeger_trace(kit, blocking, "/hold"), blocking["spanId"])
    assert str(lock.get("db.query.text", "")).startswith("SELECT n FROM dbsamples_stock"), lock


def test_mariadb_lock_wait_in_the_log_backend_links_the_waiters_trace_and_names_the_blocker(
    kit: dict[str, Any],
) -> None:
    monitor = maria_connect(True)

    def count(query: str) -> bool:
        with monitor.cursor() as cur:
            cur.execute(query, (MARIA_DB,))
            return bool(cur.fetchone()[0])

    trx_of_db = (
        "SELECT COUNT(*) FROM information_schema.INNODB_TRX t"
        " JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id WHERE p.DB = %s"
    )

    def samples(records: list[dict[str, Any]]) -> Samples | None:
        mine = [
            r
            for r in records
            if _str(r, "event.name") == "db.server.query_sample"
            and _str(r, "db.namespace") == MARIA_DB
            and _str(r, "db.system.name") == "mysql"
        ]
        for waiting in mine:
            ids = waiting["attrs"].get("mysql.blocking_thread_ids")
            if not ids or not waiting.get("traceId"):
                continue
            blockers = {_int(v) for v in ids["arrayValue"]["values"]}
            for blocking in mine:
                if (
                    _int(blocking["attrs"]["mysql.thread_id"]) in blockers
                    and blocking["timeUnixNano"] == waiting["timeUnixNano"]
                ):
                    return waiting, blocking
        return None

    try:
        waiting, blocking = _lock_wait(
            kit,
            "maria",
            {"DBPERF_DBMONITOR_DSN": f"mysql://root@127.0.0.1:3306/{MARIA_DB}"},
            MARIA_URL,
            lambda: count(trx_of_db),
            lambda: count(trx_of_db + " AND t.trx_state = 'LOCK WAIT'"),
            samples,
        )
    finally:
        monitor.close()
    assert _str(waiting, "db.query.text") == "UPDATE dbsamples_stock SET n = n + ? WHERE id = ? AND name = ?"
    # the blocker sleeps inside its transaction: MariaDB shows no statement for it, so no link
    assert _str(blocking, "mysql.command") == "Sleep" and not blocking.get("traceId")
    update = _span(_jaeger_trace(kit, waiting, "/wait"), waiting["spanId"])
    assert str(update.get("db.query.text", "")).startswith("UPDATE dbsamples_stock"), update
