"""./scripts/kit with the database host's Collector (KIT_DBHOST=1): collector/dbhost.yaml runs beside
the central Collector, sends its log records upstream to it (so on to the Loki stand-in), and
Prometheus scrapes it (the ``otelcol-dbhost`` job of collector/prometheus/prometheus.yml).
And prometheus.two-tier.yml carries the database side too (docs/database.md)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import KIT_BIN, REQUIRE_SERVICES, free_port, get, kit_binary, wait_for

ROOT = Path(__file__).parent.parent
COLLECTOR = ROOT / "collector"
WAIT = 120.0  # hang guard on a loaded machine, never a verdict


def _need(path: Path | None, what: str) -> None:
    if path is None or not os.access(path, os.X_OK):
        reason = f"{what} missing"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def _log_record(body: str) -> bytes:
    """One OTLP/JSON log record, as otel-dbperf dbmonitor would send it."""
    return json.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "dbkit-kit"}}]},
                    "scopeLogs": [{"logRecords": [{"body": {"stringValue": body}}]}],
                }
            ]
        }
    ).encode()


def test_kit_up_with_the_database_hosts_collector(tmp_path: Path) -> None:
    kit_binary("otelcol-dbperf"), kit_binary("jaeger")
    for name in ("prometheus", "prometheus-alertmanager"):
        found = shutil.which(name)
        _need(Path(found) if found else None, name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL", "JAEGER_", "LOKI_", "KIT_"))}
    run = tmp_path / "run"
    env.update(KIT_BIN=str(KIT_BIN), KIT_RUN=str(run), KIT_START_TIMEOUT=str(int(WAIT)), KIT_DBHOST="1")
    addresses = {
        name: f"127.0.0.1:{free_port()}"
        for name in ("OTELCOL_OTLP_GRPC_ENDPOINT", "OTELCOL_OTLP_HTTP_ENDPOINT", "OTELCOL_HEALTH_ENDPOINT",
                     "OTELCOL_ZPAGES_ENDPOINT", "OTELCOL_PROMETHEUS_ENDPOINT", "JAEGER_OTLP_GRPC_ENDPOINT",
                     "JAEGER_QUERY_HTTP_ENDPOINT", "JAEGER_QUERY_GRPC_ENDPOINT", "JAEGER_HEALTH_ENDPOINT",
                     "LOKI_STANDIN_ENDPOINT", "LOKI_STANDIN_HEALTH_ENDPOINT", "KIT_PROMETHEUS_ADDR",
                     "KIT_ALERTMANAGER_ADDR", "KIT_DBHOST_OTLP_GRPC_ENDPOINT", "KIT_DBHOST_OTLP_HTTP_ENDPOINT",
                     "KIT_DBHOST_HEALTH_ENDPOINT", "KIT_DBHOST_ZPAGES_ENDPOINT", "KIT_DBHOST_PROMETHEUS_ENDPOINT")
    }  # fmt: skip
    env.update(
        addresses,
        OTELCOL_TELEMETRY_PORT=str(free_port()),
        JAEGER_TELEMETRY_PORT=str(free_port()),
        KIT_DBHOST_TELEMETRY_PORT=str(free_port()),
        KIT_DBHOST_HOSTMETRICS_INTERVAL="1s",
    )
    kit = [str(ROOT / "scripts" / "kit")]
    try:
        up = subprocess.run([*kit, "up"], env=env, capture_output=True, text=True, timeout=WAIT + 120, cwd=ROOT)
        assert up.returncode == 0, up.stdout + up.stderr
        assert addresses["KIT_DBHOST_OTLP_HTTP_ENDPOINT"] in up.stdout, up.stdout
        assert get(f"http://{addresses['KIT_DBHOST_HEALTH_ENDPOINT']}/")[0] == 200
        # a log record into the database host's Collector reaches the Loki stand-in through the central one
        marker = f"dbkit-kit-{os.getpid()}"
        request = urllib.request.Request(
            f"http://{addresses['KIT_DBHOST_OTLP_HTTP_ENDPOINT']}/v1/logs",
            data=_log_record(marker),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
        loki_file = run / "loki" / "logs.jsonl"
        wait_for("the record in the Loki stand-in", lambda: loki_file.exists() and marker in loki_file.read_text())
        # Prometheus scrapes the database host's Collector (its host metrics) beside the central one
        prometheus = f"http://{addresses['KIT_PROMETHEUS_ADDR']}"
        dbhost_scrape = f"http://{addresses['KIT_DBHOST_PROMETHEUS_ENDPOINT']}/metrics"

        def targets() -> dict[str, str] | None:
            found = json.loads(get(prometheus + "/api/v1/targets")[1])["data"]["activeTargets"]
            by_url = {t["scrapeUrl"]: t["labels"]["job"] for t in found}
            return by_url if dbhost_scrape in by_url else None

        assert wait_for("Prometheus's scrape targets", targets)[dbhost_scrape] == "otelcol-dbhost"
        status = subprocess.run([*kit, "status"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert status.returncode == 0 and status.stdout.count(": healthy") == 6, status.stdout
    finally:
        down = subprocess.run([*kit, "down"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert down.returncode == 0, down.stderr
    assert down.stdout.count("kit: stopped") == 6, down.stdout
    assert not [address for address in addresses.values() if _listening(address)]
    assert not list((run / "pids").iterdir())


def test_the_two_tier_prometheus_config_has_the_database_side() -> None:
    """docs/database.md no longer asks users to add it by hand: the rules and a scrape job for the
    database hosts' Collectors (dbhost.yaml's Prometheus port), keeping the monitor's job/instance."""
    config = yaml.safe_load((COLLECTOR / "prometheus" / "prometheus.two-tier.yml").read_text())
    assert "database-alerts.yaml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dbhost = jobs["otelcol-dbhost"]
    assert dbhost["honor_labels"] is True
    assert dbhost["dns_sd_configs"][0]["port"] == 8889  # dbhost.yaml's OTELCOL_PROMETHEUS_ENDPOINT default
