"""A real Prometheus (Debian's package) scraping a test app, queried over its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REQUIRE_SERVICES, free_port


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        message = "prometheus is not installed (scripts/test installs Debian's package)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return found


def stop(proc: subprocess.Popen[Any], log: Any) -> None:
    """Terminate a server started for a test (killed after 15 s) and close its log."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def wait_ready(name: str, proc: subprocess.Popen[Any], url: str, log: Any, timeout: float = 120.0) -> None:
    """Until ``url``/-/ready answers 200 (Prometheus' and Alertmanager's readiness endpoint); fails
    with the server's log when it exits or ``timeout`` (a hang guard) runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise AssertionError(f"{name} did not start: {log.read()[-3000:]}")
        time.sleep(0.2)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on a PromQL error)."""
        qs = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float:
        (sample,) = self.query(promql)
        return float(sample["value"][1])

    def by(self, promql: str, label: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.query(promql)}

    def wait_until(self, promql: str, expected: float, timeout: float = 30.0) -> None:
        """Until ``promql`` (one sample) equals ``expected``: the scrapes have caught up."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            result = self.query(promql)
            last = result
            if len(result) == 1 and float(result[0]["value"][1]) == expected:
                return
            time.sleep(0.5)
        raise AssertionError(f"{promql}: expected {expected}, last {last}")


@contextmanager
def prometheus(
    targets: list[str],
    job: str,
    tmp_path: Path,
    rule_files: tuple[Path, ...] = (),
    alertmanagers: tuple[str, ...] = (),
    flags: tuple[str, ...] = (),
    scrape: dict[str, Any] | None = None,
) -> Iterator[Prometheus]:
    """A Prometheus scraping ``targets`` every second, evaluating ``rule_files`` every second and
    sending what fires to ``alertmanagers`` (host:port); ``scrape``: more keys of the scrape job,
    ``flags``: more command-line flags."""
    binary = prometheus_binary()
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}], **(scrape or {})}],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            *flags,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready("prometheus", proc, url, log)
        yield Prometheus(url)
    finally:
        stop(proc, log)
