"""Alerts of the shipped rules, firing in a real Prometheus, reach a real Alertmanager on the shipped
collector/alertmanager/alertmanager.yaml and are routed by severity to the receivers it names.

Prometheus and Alertmanager are Debian's packages. The rules are the shipped ones (expression, labels
and annotations kept) less their ``for`` (minutes of waiting); the data that makes them fire comes from
a /metrics endpoint the test serves. Alertmanager's receivers keep their integrations (PagerDuty,
Slack) with their URLs pointed at a local HTTP receiver; e-mail, which needs an SMTP server with TLS,
becomes a webhook to the same receiver. Only the route timers are shortened: the route tree, matchers
and ``continue`` are the shipped ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REQUIRE_SERVICES, free_port
from prometheus_server import prometheus, stop, wait_ready

ROOT = Path(__file__).parent.parent
ALERTS = ROOT / "collector" / "prometheus" / "alerts.yaml"
ALERTMANAGER = ROOT / "collector" / "alertmanager" / "alertmanager.yaml"
WAIT = 120.0  # hang guard only: generous, never a verdict
JOB = "dbperf-alert-test"
# one alert per severity; a phrase of each one's summary, to tell them apart in a Slack or PagerDuty body
FIRING = {
    "HighSlowQueryRate": ("critical", "slow queries per second"),
    "DBDeadlocks": ("warning", "deadlocks in 5 minutes"),
    "NPlusOneSpike": ("info", "N+1 requests in 10 minutes"),
}


def alertmanager_binary() -> str:
    found = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")
    if found is None:
        message = "alertmanager is not installed (Debian's prometheus-alertmanager)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return found


class _Recorder(ThreadingHTTPServer):
    """Serves the metrics that make the rules fire (GET /metrics: the counters grow at every scrape)
    and records every notification POSTed to it: (path, body)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.scrapes = 0
        self.received: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Recorder

    def do_GET(self) -> None:  # noqa: N802
        with self.server.lock:
            self.server.scrapes += 1
            n = self.server.scrapes
        body = (
            "# TYPE dbperf_db_slow_queries_total counter\n"
            f"dbperf_db_slow_queries_total {1000 * n}\n"
            "# TYPE dbperf_db_errors_total counter\n"
            f'dbperf_db_errors_total{{dbperf_db_error_kind="deadlock"}} {n}\n'
            f'dbperf_db_errors_total{{dbperf_db_error_kind="unique_violation"}} 0\n'
            "# TYPE dbperf_db_n_plus_one_total counter\n"
            f'dbperf_db_n_plus_one_total{{http_route="/authors"}} {100 * n}\n'
        )
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        with self.server.lock:
            self.server.received.append((self.path, body))
        data = b'{"status":"success","message":"Event processed","dedup_key":"x"}'
        self.send_response(202 if self.path == "/pager" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def rules_file(tmp_path: Path) -> Path:
    """The shipped rules of FIRING, as shipped less their ``for``."""
    shipped = yaml.safe_load(ALERTS.read_text())
    rules = []
    for group in shipped["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in FIRING:
                assert rule["labels"]["severity"] == FIRING[rule["alert"]][0], rule["alert"]
                rule.pop("for", None)
                rules.append(rule)
    assert sorted(r["alert"] for r in rules) == sorted(FIRING)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "shipped-subset", "rules": rules}]}))
    return path


def _timers_shortened(route: dict[str, Any]) -> None:
    for key in ("group_wait", "group_interval"):
        if key in route:
            route[key] = "1s"
    for child in route.get("routes") or []:
        _timers_shortened(child)


def alertmanager_config(tmp_path: Path, receiver_url: str) -> Path:
    """The shipped alertmanager.yaml, its receivers' URLs (and secret files) on the local receiver,
    its route timers at 1 s."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    shipped_routes = yaml.safe_load(ALERTMANAGER.read_text())["route"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "smtp-password").write_text("unused")
    config["global"]["smtp_auth_password_file"] = str(secrets / "smtp-password")
    for receiver in config["receivers"]:
        name = receiver["name"]
        for slack in receiver.get("slack_configs") or []:
            url_file = secrets / f"{name}-slack-url"
            url_file.write_text(f"{receiver_url}/{name}")
            slack["api_url_file"] = str(url_file)
        for pager in receiver.get("pagerduty_configs") or []:
            key_file = secrets / f"{name}-routing-key"
            key_file.write_text("0123456789abcdef0123456789abcdef")
            pager["routing_key_file"] = str(key_file)
            pager["url"] = f"{receiver_url}/{name}"
        if receiver.pop("email_configs", None):
            receiver["webhook_configs"] = [{"url": f"{receiver_url}/{name}", "send_resolved": True}]
    _timers_shortened(config["route"])
    # nothing else of the routing changed
    for shipped, ours in zip(shipped_routes["routes"], config["route"]["routes"], strict=True):
        assert {k: v for k, v in ours.items() if k not in ("group_wait", "group_interval")} == {
            k: v for k, v in shipped.items() if k not in ("group_wait", "group_interval")
        }
    path = tmp_path / "alertmanager.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def alertmanager(config: Path, tmp_path: Path) -> Iterator[str]:
    binary = alertmanager_binary()
    check = subprocess.run(
        [shutil.which("amtool") or "amtool", "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    address = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "alertmanager.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address={address}",
            "--cluster.listen-address=",  # no gossip: alone, on no fixed port
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready("alertmanager", proc, f"http://{address}", log, WAIT)
        yield address
    finally:
        stop(proc, log)


def _which_alert(path: str, body: str) -> set[str]:
    """The alerts a notification is about: a webhook's labels, else the summaries' phrases."""
    if path == "/email":
        return {a["labels"]["alertname"] for a in json.loads(body)["alerts"] if a["status"] == "firing"}
    return {name for name, (_, phrase) in FIRING.items() if phrase in body}


def test_shipped_rules_fire_in_prometheus_and_alertmanager_routes_them_by_severity(tmp_path: Path) -> None:
    """critical -> pager + chat + email; warning -> chat + email; info -> chat-info only (the routing
    alertmanager.yaml's header states)."""
    expected = {
        "HighSlowQueryRate": {"/pager", "/chat", "/email"},
        "DBDeadlocks": {"/chat", "/email"},
        "NPlusOneSpike": {"/chat-info"},
    }
    with (
        recorder() as receiver,
        alertmanager(alertmanager_config(tmp_path, receiver.url), tmp_path) as am,
        prometheus(
            [receiver.url.removeprefix("http://")],
            JOB,
            tmp_path,
            rule_files=(rules_file(tmp_path),),
            alertmanagers=(am,),
        ),
    ):

        def delivered() -> dict[str, set[str]]:
            with receiver.lock:
                notes = list(receiver.received)
            got: dict[str, set[str]] = {name: set() for name in FIRING}
            for path, body in notes:
                for name in _which_alert(path, body):
                    got[name].add(path)
            return got

        deadline = time.monotonic() + WAIT
        while not all(expected[name] <= paths for name, paths in delivered().items()):
            assert time.monotonic() < deadline, (delivered(), receiver.received)
            time.sleep(0.5)
        # Alertmanager's own account of its routing: each alert's group, with its receiver
        with urllib.request.urlopen(f"http://{am}/api/v2/alerts/groups", timeout=10) as resp:
            groups = json.loads(resp.read())
        routed: dict[str, set[str]] = {name: set() for name in FIRING}
        for group in groups:
            for alert in group["alerts"]:
                routed[alert["labels"]["alertname"]].add("/" + group["receiver"]["name"])
                assert alert["labels"]["job"] == JOB
        got = delivered()
        notes = list(receiver.received)
    assert routed == expected
    assert got == expected, notes
    # the PagerDuty and Slack bodies are the integrations' own, from the shipped templates
    pager = [json.loads(body) for path, body in notes if path == "/pager"]
    assert pager and pager[0]["routing_key"] == "0123456789abcdef0123456789abcdef"
    assert pager[0]["payload"]["severity"] and "slow queries per second" in pager[0]["payload"]["summary"]
    chat = [json.loads(body) for path, body in notes if path == "/chat"]
    assert {c["channel"] for c in chat} == {"#database-alerts"}
    assert any("dbperf.db.error.kind=deadlock" in a["text"] for c in chat for a in c["attachments"])
    info = [json.loads(body) for path, body in notes if path == "/chat-info"]
    assert {c["channel"] for c in info} == {"#database-info"}
