"""The distro, configurator and hooks, through real opentelemetry-instrument subprocesses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, BIN, base_env, marker_line

from otel_dbperf import attributes as A


def run(
    receiver: Any, tmp_path: Path, *, configure: bool = False, **env: str
) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    cmd = [str(BIN / "python"), "script_app.py", str(tmp_path / "s.db")]
    if configure:
        cmd.append("--configure")
    else:
        cmd.insert(0, str(BIN / "opentelemetry-instrument"))
    proc = subprocess.run(cmd, cwd=APPS, env=base_env(receiver, **env), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    spans = receiver.wait_for(lambda s: any(x["name"] == "GET /script" for x in s))
    return info, proc.stderr, spans


def _orm(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["scope"] == "opentelemetry.instrumentation.sqlalchemy"]


def _root(spans: list[dict[str, Any]]) -> dict[str, Any]:
    (root,) = [s for s in spans if s["name"] == "GET /script"]
    return root


def test_default_launch_enriches_and_traces_sqlalchemy_2_1(receiver: Any, tmp_path: Path) -> None:
    info, stderr, spans = run(receiver, tmp_path)
    # the suite runs against SQLAlchemy 2.1, which contrib's instrumentation declares out of range
    assert info["sqlalchemy"].startswith("2.1.")
    assert "nothing can be instrumented" not in stderr
    assert "otel-dbperf" not in stderr  # no clash, no warning
    loop = [
        s for s in _orm(spans) if s["attributes"].get(A.CODE_LINE_NUMBER) == marker_line("script_app.py", "script_loop")
    ]
    assert len(loop) == 6
    assert _root(spans)["attributes"][A.N_PLUS_ONE_DETECTED] is True
    assert _root(spans)["attributes"][A.N_PLUS_ONE_REPEAT_COUNT] == 6
    # stable DB semconv by default
    assert all("db.system.name" in s["attributes"] for s in loop)


def test_configure_in_code_gives_the_same_result(receiver: Any, tmp_path: Path) -> None:
    info, stderr, spans = run(receiver, tmp_path, configure=True)
    assert "otel-dbperf" not in stderr
    root = _root(spans)["attributes"]
    assert root[A.N_PLUS_ONE_DETECTED] is True and root[A.DB_QUERY_COUNT] == 7
    assert all(A.QUERY_FINGERPRINT in s["attributes"] for s in _orm(spans) if "db.query.text" in s["attributes"])


def test_clash_with_another_configurator_is_told_in_one_line(receiver: Any, tmp_path: Path) -> None:
    _, stderr, spans = run(
        receiver,
        tmp_path,
        OTEL_PYTHON_DISTRO="distro",
        OTEL_PYTHON_CONFIGURATOR="configurator",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
    )
    lines = [line for line in stderr.splitlines() if "otel-dbperf" in line]
    assert len(lines) == 1, stderr
    assert "NOT enriched" in lines[0] and "OTEL_PYTHON_CONFIGURATOR=otel_dbperf" in lines[0]
    assert _orm(spans), "SQL is still traced"
    assert not any(A.QUERY_FINGERPRINT in s["attributes"] for s in spans)


def test_disabled_is_plain_opentelemetry(receiver: Any, tmp_path: Path) -> None:
    _, stderr, spans = run(receiver, tmp_path, DBPERF_ENABLED="false")
    assert "otel-dbperf" not in stderr
    assert _orm(spans)
    assert not any(k.startswith("dbperf.") for s in spans for k in s["attributes"])
    assert not any(k.startswith("code.") for s in spans for k in s["attributes"])


def test_malformed_variable_warns_and_the_app_runs(receiver: Any, tmp_path: Path) -> None:
    _, stderr, spans = run(receiver, tmp_path, DBPERF_SLOW_QUERY_THRESHOLD_MS="fast")
    warnings = [line for line in stderr.splitlines() if "DBPERF_SLOW_QUERY_THRESHOLD_MS" in line]
    assert len(warnings) == 1 and "'fast'" in warnings[0] and "default 100" in warnings[0]
    assert _root(spans)["attributes"][A.DB_QUERY_COUNT] == 7


def test_sqlcommenter_appends_trace_context(receiver: Any, tmp_path: Path) -> None:
    info, _, spans = run(receiver, tmp_path, DBPERF_SQLCOMMENTER="true", DBPERF_SANITIZE_STATEMENTS="false")
    driver = [s for s in spans if s["scope"] == "opentelemetry.instrumentation.sqlite3"]
    commented = [s for s in driver if "traceparent" in str(s["attributes"].get("db.query.text", ""))]
    assert commented, [s["attributes"] for s in driver]
    assert all(info["trace_id"] in str(s["attributes"]["db.query.text"]) for s in commented)


def test_sqlcommenter_off_by_default(receiver: Any, tmp_path: Path) -> None:
    _, _, spans = run(receiver, tmp_path, DBPERF_SANITIZE_STATEMENTS="false")
    assert not any("traceparent" in str(s["attributes"].get("db.query.text", "")) for s in spans)


def test_launcher_selects_our_distro_even_with_opentelemetry_distro_installed() -> None:
    from importlib.metadata import entry_points

    distros = {ep.name for ep in entry_points(group="opentelemetry_distro")}
    assert {"distro", "otel_dbperf"} <= distros  # both installed in the test environment
    out = subprocess.run(
        [
            str(BIN / "opentelemetry-instrument"),
            str(BIN / "python"),
            "-c",
            "import os; print(os.environ.get('OTEL_PYTHON_DISTRO'), os.environ.get('OTEL_PYTHON_CONFIGURATOR'))",
        ],
        capture_output=True,
        text=True,
        env={
            "PATH": str(BIN),
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        },
        check=True,
    ).stdout.split()
    assert out == ["otel_dbperf", "otel_dbperf"]


def test_effective_configuration_is_logged_once_with_secrets_masked(receiver: Any, tmp_path: Path) -> None:
    _, stderr, _ = run(
        receiver,
        tmp_path,
        DBPERF_LOG_LEVEL="DEBUG",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer s3cret-token",
        OTEL_RESOURCE_ATTRIBUTES="db.url=postgresql://app:hunter2@db:5432/prod",
        DBPERF_JAEGER_URL="https://admin:pa/ss-w0rd@jaeger:16686/?api_key=k3y-canary",
    )
    lines = [line for line in stderr.splitlines() if "effective configuration" in line]
    assert len(lines) == 1, stderr
    assert "slow_query_threshold_ms=100.0" in lines[0] and "postgresql://***@db:5432/prod" in lines[0]
    assert "s3cret" not in stderr and "hunter2" not in stderr
    assert "pa/ss-w0rd" not in stderr and "k3y-canary" not in stderr and "admin" not in stderr


@pytest.mark.parametrize("driver", ["sqlite3", "psycopg", "psycopg2"])
def test_dbapi_clients_are_enriched_alike(receiver: Any, tmp_path: Path, driver: str, request: Any) -> None:
    target = str(tmp_path / "d.db") if driver == "sqlite3" else request.getfixturevalue("pg_dsn")
    cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "dbapi_app.py", driver, target]
    proc = subprocess.run(cmd, cwd=APPS, env=base_env(receiver), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    spans = receiver.wait_for(lambda s: any(x["name"] == "GET /dbapi" for x in s))
    line = marker_line("dbapi_app.py", "dbapi_loop")
    loop = [s for s in spans if s["attributes"].get(A.CODE_LINE_NUMBER) == line]
    assert len(loop) == 6, [(s["scope"], s["attributes"]) for s in spans]
    assert {s["attributes"][A.CODE_FILE_PATH] for s in loop} == {str(APPS / "dbapi_app.py")}
    assert len({s["attributes"][A.QUERY_FINGERPRINT] for s in loop}) == 1
    assert all(s["attributes"]["db.query.text"] == "SELECT owner FROM dbapi_items WHERE owner = ?" for s in loop)
    assert not any(b"@example.com" in body for body in receiver.raw)
    (root,) = [s for s in spans if s["name"] == "GET /dbapi"]
    assert root["attributes"][A.N_PLUS_ONE_DETECTED] is True
    assert root["attributes"][A.N_PLUS_ONE_REPEAT_COUNT] == 6
    assert root["attributes"][A.N_PLUS_ONE_QUERY_SUMMARY] == "SELECT dbapi_items"
