"""``otel-dbperf dbmonitor`` on the real servers, without a Collector (``--once --file``): the
least-privilege roles of docs/database.md suffice, the DSN comes from a file or a variable and its
password never reaches stderr, bad settings warn, and a database that is down is retried, never
fatal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import MARIA_DB, PG_DB, PG_HOST, PG_PORT, free_port, maria_connect

from otel_dbperf import _guard
from otel_dbperf.dbmonitor import loop
from otel_dbperf.dbmonitor.filesink import JsonLinesLogExporter, JsonLinesMetricExporter
from otel_dbperf.settings import Settings, describe_effective

ROOT = Path(__file__).parent.parent
CANARY = "S3cret-Canary/pw@x"  # a password with URL-special characters
ROLE = f"dbperf_mon_{os.getpid()}"

pytestmark = pytest.mark.services


def monitor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL", "DBPERF_"))}
    return subprocess.run(
        [sys.executable, "-m", "otel_dbperf.report.cli", "dbmonitor", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def points(path: Path) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    """Every metric data point in an OTLP JSON lines file: name -> [(value, attributes)]."""
    found: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for line in path.read_text().splitlines():
        for rm in json.loads(line).get("resourceMetrics", []):
            for sm in rm["scopeMetrics"]:
                for metric in sm["metrics"]:
                    body = metric.get("sum") or metric.get("gauge")
                    for dp in body["dataPoints"]:
                        value = float(dp.get("asInt", dp.get("asDouble", 0)))
                        attrs = {a["key"]: next(iter(a["value"].values())) for a in dp.get("attributes", [])}
                        found.setdefault(metric["name"], []).append((value, attrs))
    return found


def resources(path: Path) -> list[dict[str, Any]]:
    return [
        {a["key"]: next(iter(a["value"].values())) for a in rm["resource"]["attributes"]}
        for line in path.read_text().splitlines()
        for rm in json.loads(line).get("resourceMetrics", [])
    ]


@pytest.fixture(scope="module")
def pg_role(pg_user: str) -> str:
    """A login role with pg_monitor and nothing else, its password the canary."""
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user=pg_user, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
        conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{CANARY}'")
        conn.execute(f"GRANT pg_monitor TO {ROLE}")
    yield ROLE
    with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user=pg_user, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")


@pytest.fixture(scope="module")
def maria_user() -> str:
    """A MariaDB user with PROCESS only (docs/database.md), its password the canary."""
    admin = maria_connect(autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS '{ROLE}'@'%%'", ())
        cur.execute(f"CREATE USER '{ROLE}'@'%%' IDENTIFIED BY %s", (CANARY,))
        cur.execute(f"GRANT PROCESS ON *.* TO '{ROLE}'@'%%'", ())
    yield ROLE
    with admin.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS '{ROLE}'@'%%'", ())
    admin.close()


def test_postgres_with_pg_monitor_from_a_dsn_file_sees_other_sessions(
    pg_role: str, pg_user: str, tmp_path: Path
) -> None:
    from urllib.parse import quote

    import psycopg

    dsn = tmp_path / "dsn"
    dsn.write_text(f"postgresql://{pg_role}:{quote(CANARY, safe='')}@{PG_HOST}:{PG_PORT}/{PG_DB}\n")
    out_file = tmp_path / "out.jsonl"
    other = psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user=pg_user)  # another user's session
    try:
        other.execute("SELECT 1")  # now idle in a transaction
        out = monitor("--once", "--file", str(out_file), DBPERF_DBMONITOR_DSN_FILE=str(dsn))
    finally:
        other.close()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"up": True, "queries": 5}
    assert CANARY not in out.stderr + out.stdout and quote(CANARY, safe="") not in out.stderr
    found = points(out_file)
    assert found["dbperf.db.server.up"] == [(1.0, {"db.system.name": "postgresql"})]
    (max_conn,) = found["postgresql.connection.max"]
    assert max_conn[0] >= 1
    assert PG_DB in {attrs["db.namespace"] for _, attrs in found["postgresql.commits"]}
    assert PG_DB in {attrs["db.namespace"] for _, attrs in found["postgresql.db_size"]}
    # pg_monitor reads another user's session: its open transaction is seen
    ((idle, _),) = found["dbperf.db.server.idle_in_transaction.max_age"]
    assert idle > 0
    (resource,) = resources(out_file)
    assert resource["service.name"] == "otel-dbperf-dbmonitor"
    assert resource["service.instance.id"] == f"{PG_HOST}:{PG_PORT}"


def test_mariadb_with_process_only_from_the_dsn_variable(maria_user: str, tmp_path: Path) -> None:
    from urllib.parse import quote

    out_file = tmp_path / "out.jsonl"
    url = f"mysql://{maria_user}:{quote(CANARY, safe='')}@127.0.0.1:3306/"  # PROCESS sees no database: none named
    out = monitor("--once", "--file", str(out_file), DBPERF_DBMONITOR_DSN=url)
    assert out.returncode == 0, out.stderr
    assert CANARY not in out.stderr and quote(CANARY, safe="") not in out.stderr
    found = points(out_file)
    assert found["dbperf.db.server.up"] == [(1.0, {"db.system.name": "mysql"})]
    kinds = {attrs["kind"] for _, attrs in found["mysql.threads"]}
    assert {"connected", "running"} <= kinds
    assert found["dbperf.db.server.connection.max"][0][0] >= 1
    assert {a["operation"] for _, a in found["mysql.buffer_pool.operations"]} == {"read_requests", "reads"}
    assert "dbperf.db.server.deadlocks" in found and "dbperf.db.server.sessions.blocking" in found


def test_a_refused_password_is_masked_and_exits_1_with_once(tmp_path: Path, maria_user: str) -> None:
    from urllib.parse import quote

    wrong = CANARY + "-wrong"
    url = f"mysql://{maria_user}:{quote(wrong, safe='')}@127.0.0.1:3306/{MARIA_DB}"
    out = monitor("--once", "--file", str(tmp_path / "out.jsonl"), DBPERF_DBMONITOR_DSN=url)
    assert out.returncode == 1, out.stderr
    assert f"cannot connect to mysql 127.0.0.1:3306/{MARIA_DB}" in out.stderr and "Access denied" in out.stderr
    assert wrong not in out.stderr and quote(wrong, safe="") not in out.stderr
    assert points(tmp_path / "out.jsonl")["dbperf.db.server.up"] == [(0.0, {"db.system.name": "mysql"})]


def test_a_malformed_dsn_is_refused_without_echoing_it(tmp_path: Path) -> None:
    out = monitor("--once", DBPERF_DBMONITOR_DSN=f"host=db password={CANARY} oops")
    assert out.returncode == 2
    assert "not a valid libpq connection string" in out.stderr and CANARY not in out.stderr
    out = monitor("--once", DBPERF_DBMONITOR_DSN=f"oracle://u:{CANARY}@db/x")
    assert out.returncode == 2 and "'oracle'" in out.stderr and CANARY not in out.stderr


def test_without_a_dsn_or_with_an_unreadable_file_it_says_which_variable(tmp_path: Path) -> None:
    out = monitor("--once")
    assert out.returncode == 2
    assert "DBPERF_DBMONITOR_DSN_FILE" in out.stderr and "DBPERF_DBMONITOR_DSN" in out.stderr
    missing = tmp_path / "nope"
    out = monitor("--once", DBPERF_DBMONITOR_DSN_FILE=str(missing))
    assert out.returncode == 2
    assert f"cannot read DBPERF_DBMONITOR_DSN_FILE '{missing}'" in out.stderr


def test_a_malformed_interval_warns_naming_variable_value_and_default(pg_user: str, tmp_path: Path) -> None:
    out = monitor(
        "--once",
        "--file",
        str(tmp_path / "out.jsonl"),
        DBPERF_DBMONITOR_DSN=f"postgresql://{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}",
        DBPERF_DBMONITOR_INTERVAL="fast",
        DBPERF_DBMONITOR_SAMPLE_INTERVAL="-1",
    )
    assert out.returncode == 0, out.stderr
    assert "invalid value 'fast' for DBPERF_DBMONITOR_INTERVAL" in out.stderr and "default 15" in out.stderr
    assert "invalid value '-1' for DBPERF_DBMONITOR_SAMPLE_INTERVAL" in out.stderr and "default 1" in out.stderr


def test_the_dsn_is_masked_in_the_effective_configuration() -> None:
    settings = Settings.from_env({"DBPERF_DBMONITOR_DSN": f"postgresql://mon:{CANARY}@db/shop"})
    line = describe_effective(settings, {})
    assert CANARY not in line and "dbmonitor_dsn='***'" in line


def test_the_masker_hides_the_password_in_any_record(caplog: pytest.LogCaptureFixture) -> None:
    masker = loop.Masker()
    target = loop.parse_target(f"postgresql://mon:{CANARY.replace('/', '%2F').replace('@', '%40')}@db:5/shop")
    masker.secrets = target.secrets
    record = logging.LogRecord("otel_dbperf.dbmonitor", logging.WARNING, "", 0, "failed: %s", (CANARY,), None)
    masker.filter(record)
    assert CANARY not in record.getMessage() and "***" in record.getMessage()
    assert target.describe() == "postgresql db:5/shop"


class FlakyTarget:
    """The real PostgreSQL behind a connect that fails while ``down`` is set."""

    def __init__(self, pg_user: str) -> None:
        self.down = True
        self.real = loop.parse_target(f"postgresql://{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}")

    def connect(self) -> Any:
        if self.down:
            import psycopg

            raise psycopg.OperationalError(f"connection refused (password {CANARY})")
        return self.real.connect()


def test_a_database_down_is_said_once_shown_as_up_0_and_retried_until_it_is_back(
    pg_user: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakyTarget(pg_user)
    target = flaky.real._replace(connect=flaky.connect, secrets=(CANARY,))
    out_file = tmp_path / "out.jsonl"
    settings = Settings.from_env({"DBPERF_DBMONITOR_INTERVAL": "1", "DBPERF_DBMONITOR_SAMPLE_INTERVAL": "0",
                                  "DBPERF_DBMONITOR_STATEMENTS_INTERVAL": "0"})  # fmt: skip
    mon = loop.Monitor(target, settings, JsonLinesMetricExporter(str(out_file)), JsonLinesLogExporter(str(out_file)))
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="otel_dbperf.dbmonitor"):
        try:
            assert mon.collect_metrics() is False
            assert mon.collect_metrics() is False  # said once, not twice
            flaky.down = False
            assert mon.collect_metrics() is True
            mon.conn.close()  # the server drops the monitor's connection
            assert mon.collect_metrics() is False  # lost: said, dropped
            assert mon.collect_metrics() is True  # reconnected
            assert mon.run(stop, once=True) is True
        finally:
            mon.close()
    ups = [value for value, _ in points(out_file)["dbperf.db.server.up"]]
    assert ups == [0, 0, 1, 0, 1, 1]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot connect to postgresql" in m for m in messages) == 1, messages
    assert sum("lost the connection" in m for m in messages) == 1, messages
    assert sum("connected to postgresql" in m and "again" in m for m in messages) == 2, messages


def test_the_port_of_a_dsn_must_be_a_number() -> None:
    with pytest.raises(ValueError, match="port"):
        loop.parse_target(f"mysql://u:{CANARY}@db:notaport/x")
    assert loop.parse_target(f"mysql://u@db:{free_port()}/x").dialect == "mysql"


def test_a_missing_grant_is_said_once_as_such_and_the_connection_kept(caplog: pytest.LogCaptureFixture) -> None:
    """A MariaDB user without PROCESS: the server refuses the session views (error 1227). That is no
    lost connection: one warning naming the grant, up 0, and the same connection at the next round."""
    user = f"dbperf_nogrant_{os.getpid()}"
    admin = maria_connect(autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS '{user}'@'%%'", ())
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (CANARY,))
    try:
        from urllib.parse import quote

        target = loop.parse_target(f"mysql://{user}:{quote(CANARY, safe='')}@127.0.0.1:3306/")
        settings = Settings.from_env({})
        sink = JsonLinesMetricExporter(os.devnull)
        mon = loop.Monitor(target, settings, sink, JsonLinesLogExporter(os.devnull))
        with caplog.at_level(logging.INFO, logger="otel_dbperf.dbmonitor"):
            try:
                assert mon.collect_metrics() is False
                first = mon.conn
                assert first is not None and first.open
                assert mon.collect_metrics() is False
                assert mon.conn is first  # not dropped and reconnected
            finally:
                mon.close()
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(messages) == 1, messages
        assert "may lack a grant" in messages[0] and "1227" in messages[0]
        assert not any("lost the connection" in m for m in messages)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%%'", ())
        admin.close()


def test_the_loop_hands_samples_and_statements_its_connection_dialect_and_logger(
    pg_user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract with samples.py / statements.py: called on the monitor's own autocommit
    connection with the dialect and an OpenTelemetry logger whose records reach the exporter;
    one that raises costs nothing but a warning."""
    from opentelemetry._logs import LogRecord

    from otel_dbperf.dbmonitor import samples, statements

    calls: list[tuple[str, str, bool]] = []

    def fake_samples(conn: Any, dialect: str, logger: Any) -> int:
        calls.append(("samples", dialect, bool(conn.autocommit)))
        ((one,),) = conn.execute("SELECT 1").fetchall()
        logger.emit(LogRecord(body="sample", attributes={"event.name": "db.server.query_sample", "n": one}))
        return 1

    def failing_statements(conn: Any, dialect: str, logger: Any) -> int:
        calls.append(("statements", dialect, bool(conn.autocommit)))
        raise RuntimeError("a bug in the statements work")

    monkeypatch.setattr(samples, "emit_samples", fake_samples)
    monkeypatch.setattr(statements, "emit_statements", failing_statements)
    out_file = tmp_path / "out.jsonl"
    target = loop.parse_target(f"postgresql://{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}")
    mon = loop.Monitor(
        target, Settings.from_env({}), JsonLinesMetricExporter(str(out_file)), JsonLinesLogExporter(str(out_file))
    )
    try:
        with pytest.raises(RuntimeError, match="a bug in the statements work"):  # under pytest a bug surfaces
            mon.run(threading.Event(), once=True)
        monkeypatch.setattr(_guard, "RERAISE", False)  # in production it costs that round only
        assert mon.run(threading.Event(), once=True) is True
    finally:
        mon.close()
    assert calls == [("samples", "postgresql", True), ("statements", "postgresql", True)] * 2
    records = [
        lr
        for line in out_file.read_text().splitlines()
        for rl in json.loads(line).get("resourceLogs", [])
        for sl in rl["scopeLogs"]
        for lr in sl["logRecords"]
    ]
    assert [r["body"]["stringValue"] for r in records] == ["sample", "sample"]
