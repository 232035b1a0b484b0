"""The database server's side end to end: real PostgreSQL and MariaDB -> ``otel-dbperf dbmonitor``
(two subprocesses) -> the kit's real Collector on collector/dbhost.yaml (with its hostmetrics
receiver) -> a real Prometheus evaluating collector/prometheus/database-alerts.yaml. Every panel of
the database dashboard returns series and every alert rule evaluates on the series it names; a lock
wait, a long and idle-in-transaction session and a deadlock made here move their series.

One Collector, one Prometheus and two monitors for the module; the heavy case is one test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    MARIA_DB,
    PG_DB,
    PG_HOST,
    PG_PORT,
    free_port,
    get,
    kit_binary,
    maria_connect,
)
from prometheus_server import Prometheus, prometheus

ROOT = Path(__file__).parent.parent
COLLECTOR = ROOT / "collector"
DASHBOARD = COLLECTOR / "grafana" / "dashboards" / "otel-dbperf-database.json"
ALERTS = COLLECTOR / "prometheus" / "database-alerts.yaml"
WAIT = 120.0  # hang guard on a loaded machine, never a verdict
#: series that need a PostgreSQL standby (none here): their expressions must evaluate, without data
NEEDS_A_STANDBY = {"postgresql_wal_lag_seconds", "postgresql_replication_data_delay_bytes"}
METRIC = re.compile(r"\b((?:postgresql|mysql|dbperf_db_server|system)_[a-z0-9_]+)\b")

pytestmark = pytest.mark.services


def _until(what: str, probe: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    start = time.monotonic()
    while time.monotonic() < deadline:
        last = probe()
        if last:
            print(f"{what}: {time.monotonic() - start:.1f} s")
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_user: str) -> Iterator[dict[str, Any]]:
    otelcol = kit_binary("otelcol-dbperf")
    maria_connect().close()  # makes the session's MariaDB database (or skips/fails without MariaDB)
    tmp = tmp_path_factory.mktemp("dbmon")
    ports = {name: free_port() for name in ("grpc", "http", "prom", "health", "zpages", "telemetry", "upstream")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL", "DBPERF_"))}
    collector_env = {
        **env,
        "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports['grpc']}",
        "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports['http']}",
        "OTELCOL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{ports['prom']}",
        "OTELCOL_HEALTH_ENDPOINT": f"127.0.0.1:{ports['health']}",
        "OTELCOL_ZPAGES_ENDPOINT": f"127.0.0.1:{ports['zpages']}",
        "OTELCOL_TELEMETRY_HOST": "127.0.0.1",
        "OTELCOL_TELEMETRY_PORT": str(ports["telemetry"]),
        "OTELCOL_QUEUE_DIR": str(tmp / "queue"),
        "OTELCOL_HOSTMETRICS_INTERVAL": "1s",
        "UPSTREAM_OTLP_ENDPOINT": f"127.0.0.1:{ports['upstream']}",  # nobody there: logs are not checked here
    }
    logs: list[Any] = []
    procs: list[subprocess.Popen[Any]] = []

    def start(name: str, cmd: list[str], proc_env: dict[str, str]) -> subprocess.Popen[Any]:
        log = open(tmp / f"{name}.log", "w+")  # noqa: SIM115
        logs.append(log)
        proc = subprocess.Popen(cmd, env=proc_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    dsn_file = tmp / "pg-dsn"
    dsn_file.write_text(f"postgresql://{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}\n")
    monitor_env = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports['http']}",
        "DBPERF_DBMONITOR_INTERVAL": "1",
        "DBPERF_DBMONITOR_SAMPLE_INTERVAL": "0",
        "DBPERF_DBMONITOR_STATEMENTS_INTERVAL": "0",
    }
    try:
        collector = start("otelcol", [str(otelcol), f"--config={COLLECTOR / 'dbhost.yaml'}"], collector_env)

        def healthy() -> bool:
            if collector.poll() is not None:
                logs[0].seek(0)
                raise AssertionError(f"the Collector exited: {logs[0].read()[-3000:]}")
            try:
                return get(f"http://127.0.0.1:{ports['health']}/", timeout=3)[0] == 200
            except OSError:
                return False

        _until("the Collector", healthy)
        command = [sys.executable, "-m", "otel_dbperf.report.cli", "dbmonitor"]
        start("dbmonitor-pg", command, {**monitor_env, "DBPERF_DBMONITOR_DSN_FILE": str(dsn_file)})
        start(
            "dbmonitor-maria",
            command,
            {**monitor_env, "DBPERF_DBMONITOR_DSN": f"mysql://root@127.0.0.1:3306/{MARIA_DB}"},
        )
        with prometheus(
            [f"127.0.0.1:{ports['prom']}"], "otelcol-dbhost", tmp, rule_files=(ALERTS,), scrape={"honor_labels": True}
        ) as prom:
            yield {"prom": prom, "pg": f"{PG_HOST}:{PG_PORT}", "maria": "127.0.0.1:3306", "tmp": tmp, "logs": logs}
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()


def _concrete(expr: str) -> str:
    """A panel's expression as Grafana sends it with every variable on All."""
    for name, value in {"$__rate_interval": "1m", '"$job"': '".+"', '"$instance"': '".+"', '"$host"': '".+"'}.items():
        expr = expr.replace(name, value)
    return expr


def _panel_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def _alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def _value(prom: Prometheus, promql: str) -> float:
    result = prom.query(promql)
    return max((float(s["value"][1]) for s in result), default=float("nan"))


def _at_least(prom: Prometheus, promql: str, floor: float) -> Callable[[], bool]:
    return lambda: _value(prom, promql) >= floor


def _pg(pg_user: str, autocommit: bool = False) -> Any:
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user=pg_user, autocommit=autocommit)


def _in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_server_metrics_reach_prometheus_panels_and_alerts_evaluate_and_move(
    stack: dict[str, Any], pg_user: str
) -> None:
    opened: list[Any] = []
    try:
        _scenario(stack, pg_user, opened)
    finally:  # an open MariaDB transaction would hold up the session's DROP DATABASE at exit
        for conn in opened:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already closed
                pass


def _scenario(stack: dict[str, Any], pg_user: str, opened: list[Any]) -> None:
    import psycopg
    import pymysql

    prom: Prometheus = stack["prom"]
    pg, maria = stack["pg"], stack["maria"]
    for instance, system in ((pg, "postgresql"), (maria, "mysql")):
        _until(
            f"{system} up in Prometheus",
            lambda i=instance, s=system: (
                _value(prom, f'dbperf_db_server_up{{instance="{i}",db_system_name="{s}"}}') == 1
            ),
        )
    # -- a lock wait, a long transaction and a session idle in it, on both servers
    setup = _pg(pg_user, autocommit=True)
    setup.execute("DROP TABLE IF EXISTS dbmon_locks")
    setup.execute("CREATE TABLE dbmon_locks (id int PRIMARY KEY, v int)")
    setup.execute("INSERT INTO dbmon_locks VALUES (1, 0), (2, 0)")
    holder, waiter = _pg(pg_user), _pg(pg_user)
    opened += [setup, holder, waiter]
    holder.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 1")  # open transaction, now idle in it
    pg_wait, pg_errors = _in_thread(lambda: waiter.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 1"))
    m_setup = maria_connect(autocommit=True)
    with m_setup.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS dbmon_locks")
        cur.execute("CREATE TABLE dbmon_locks (id int PRIMARY KEY, v int) ENGINE=InnoDB")
        cur.execute("INSERT INTO dbmon_locks VALUES (1, 0), (2, 0)")
    m_holder, m_waiter = maria_connect(), maria_connect()
    opened += [m_setup, m_holder, m_waiter]
    with m_holder.cursor() as cur:
        cur.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 1")

    def maria_wait() -> None:
        with m_waiter.cursor() as cur:
            cur.execute("SET SESSION innodb_lock_wait_timeout = 100")
            cur.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 1")

    m_wait, m_errors = _in_thread(maria_wait)
    try:
        for instance in (pg, maria):
            sel = f'instance="{instance}"'
            _until(f"{instance}: a session waiting", _at_least(prom, f"dbperf_db_server_sessions_waiting{{{sel}}}", 1))
            _until(f"{instance}: a blocker", _at_least(prom, f"dbperf_db_server_sessions_blocking{{{sel}}}", 1))
            _until(
                f"{instance}: an open transaction",
                lambda s=sel: _value(prom, f"dbperf_db_server_transaction_max_age_seconds{{{s}}}") > 0,
            )
            _until(
                f"{instance}: idle in transaction",
                lambda s=sel: _value(prom, f"dbperf_db_server_idle_in_transaction_max_age_seconds{{{s}}}") > 0,
            )
        _until(
            "PostgreSQL's locks",
            _at_least(prom, f'postgresql_database_locks{{instance="{pg}",mode="ExclusiveLock"}}', 1),
        )
        # the lock-wait alert, evaluated by Prometheus on these series, is pending (its for: is 2m)
        _until(
            "DatabaseLockWaits pending",
            lambda: (
                {s["metric"]["instance"] for s in prom.query('ALERTS{alertname="DatabaseLockWaits"}')} >= {pg, maria}
            ),
        )
        # every panel returns series (but the standby's), every alert evaluates on series that exist
        empty = []
        for title, expr in _panel_exprs():
            names = set(METRIC.findall(expr))
            result = prom.query(_concrete(expr))
            if not result and not names <= NEEDS_A_STANDBY:
                empty.append((title, expr))
        assert empty == []
        present = {name for name in _all_names(prom)}
        for alert, expr in _alert_exprs().items():
            prom.query(expr)  # raises on a PromQL error
            names = set(METRIC.findall(expr)) - NEEDS_A_STANDBY
            if not names:  # DatabaseReplicationLag: evaluated above, its series need a standby
                continue
            assert names & present, (alert, names)
            if "__name__" not in expr:
                assert names <= present, (alert, names - present)
    finally:
        holder.rollback()
        with m_holder.cursor() as cur:
            cur.execute("ROLLBACK")
        pg_wait.join(30)
        m_wait.join(30)
    assert not pg_errors and not m_errors, (pg_errors, m_errors)
    waiter.rollback()
    with m_waiter.cursor() as cur:
        cur.execute("ROLLBACK")
    _until(
        "the waits gone",
        lambda: _value(prom, f'max(dbperf_db_server_sessions_waiting{{instance=~"{pg}|{maria}"}})') == 0,
    )
    # -- a deadlock on each server moves its counter
    pg_before = _value(prom, f'postgresql_deadlocks_total{{instance="{pg}",db_namespace="{PG_DB}"}}')
    m_before = _value(prom, f'dbperf_db_server_deadlocks_total{{instance="{maria}"}}')
    holder.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 1")
    waiter.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 2")
    crossed, crossed_errors = _in_thread(lambda: holder.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 2"))
    time.sleep(0.2)  # let the thread's update queue behind the lock first (either order deadlocks)
    deadlocked = []
    try:
        waiter.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 1")
    except psycopg.errors.DeadlockDetected as exc:
        deadlocked.append(exc)
    crossed.join(30)
    deadlocked += [e for e in crossed_errors if isinstance(e, psycopg.errors.DeadlockDetected)]
    holder.rollback()
    waiter.rollback()
    assert len(deadlocked) == 1, (deadlocked, crossed_errors)
    with m_holder.cursor() as a, m_waiter.cursor() as b:
        a.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 1")
        b.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 2")

        def maria_cross() -> None:
            a.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 2")

        m_crossed, m_crossed_errors = _in_thread(maria_cross)
        time.sleep(0.2)
        m_deadlocked = []
        try:
            b.execute("UPDATE dbmon_locks SET v = v + 1 WHERE id = 1")
        except pymysql.err.OperationalError as exc:
            m_deadlocked.append(exc)
        m_crossed.join(30)
        m_deadlocked += list(m_crossed_errors)
        a.execute("ROLLBACK")
        b.execute("ROLLBACK")
    assert [e.args[0] for e in m_deadlocked] == [1213], m_deadlocked  # ER_LOCK_DEADLOCK
    _until(
        "PostgreSQL's deadlock counted",
        _at_least(prom, f'postgresql_deadlocks_total{{instance="{pg}",db_namespace="{PG_DB}"}}', pg_before + 1),
    )
    _until(
        "MariaDB's deadlock counted",
        _at_least(prom, f'dbperf_db_server_deadlocks_total{{instance="{maria}"}}', m_before + 1),
    )


def _all_names(prom: Prometheus) -> set[str]:
    import urllib.request

    with urllib.request.urlopen(f"{prom.url}/api/v1/label/__name__/values", timeout=10) as resp:
        return set(json.loads(resp.read())["data"])


def test_the_database_hosts_collector_started_cleanly_with_no_deprecated_name(stack: dict[str, Any]) -> None:
    log = (stack["tmp"] / "otelcol.log").read_text()
    assert "Everything is ready" in log, log[-3000:]
    assert "deprecated" not in log.lower(), [line for line in log.splitlines() if "deprecated" in line.lower()]
