"""A telemetry backend that is down: one line per signal on stderr, drops counted, a bounded exit.

End to end: ``opentelemetry-instrument gunicorn -w 2`` on the Flask test app with OTLP pointed at
a closed port, at a black hole (accepts, never answers) and at a live receiver; SIGTERM to the
master as an orchestrator sends it. The exit-time assertions check the documented bound
(docs/configuration.md, "When the backend is down"), with a margin for a loaded machine.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from black_hole import BlackHole, closed_port
from conftest import base_env, get, serve, server_output
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy import create_engine

from otel_dbperf.exporters import _watch as _backend
from otel_dbperf.settings import Settings

APP = "flask_app:app"
BUDGET_S = Settings().shutdown_timeout_ms / 1000
# gunicorn's master flushes after its workers have exited: two bounded flushes, plus gunicorn's own exit (~1 s idle)
BOUND_S = 2 * (BUDGET_S + _backend.GRACE_S) + 1.0
# a loaded 2-core machine stretches gunicorn's own exit (measured up to 4 s with a live backend);
# BOUND_S + MARGIN_S (15.5 s) stays below the 16-36 s exits without the bound (docs/configuration.md)
MARGIN_S = 10.0
LINE = re.compile(r"^otel-dbperf: exports of (traces|metrics|logs) to (\S+) fail.*\(process (\d+);", re.M)


# ---- unit: what is said, and when ---------------------------------------------------------------


class Failing(SpanExporter):
    def __init__(self) -> None:
        self._endpoint = "https://user:s3cret@collector.example:4318/v1/traces?token=abc"
        self.ok = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS if self.ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def test_said_once_then_rate_limited_and_when_back(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = Failing()
    exporter = _backend.WatchedSpanExporter(inner)
    now = [1000.0]
    monkeypatch.setattr(_backend.time, "monotonic", lambda: now[0])
    spans: Any = [object()] * 3
    for _ in range(4):
        assert exporter.export(spans) is SpanExportResult.FAILURE
        now[0] += 60
    err = capsys.readouterr().err
    assert err.count("otel-dbperf: exports of traces") == 1, err
    assert "to https://collector.example:4318/v1/traces fail: 3 spans dropped so far" in err
    assert "s3cret" not in err and "token" not in err and "user" not in err
    assert f"(process {os.getpid()}; said again at most every 5 minutes" in err
    assert exporter.watch.dropped == 12 and exporter.watch.failures == 4

    now[0] += _backend.REPEAT_S
    exporter.export(spans[:1])
    assert "fail: 13 spans dropped so far" in capsys.readouterr().err  # said again, with the count

    inner.ok = True
    exporter.export(spans)
    exporter.export(spans)
    err = capsys.readouterr().err
    assert err.count("work again") == 1 and "13 spans dropped before" in err
    inner.ok = False
    exporter.export(spans[:1])
    assert not capsys.readouterr().err  # the last line is less than 5 minutes old


def test_endpoints_are_shown_without_credentials() -> None:
    class E:
        def __init__(self, endpoint: str) -> None:
            self._endpoint = endpoint

    assert _backend.describe_endpoint(E("http://u:p@[::1]:4318/v1/logs#x")) == "http://[::1]:4318/v1/logs"
    assert _backend.describe_endpoint(E("u:p@collector:4317")) == "collector:4317"
    assert _backend.describe_endpoint(E("http://collector:99999/v1/traces")) == "E"  # unparsable port: the type
    assert _backend.describe_endpoint(Failing()) == "https://collector.example:4318/v1/traces"


def test_an_exception_in_export_counts_as_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    class Raising(Failing):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            raise ConnectionError("refused")

    exporter = _backend.WatchedSpanExporter(Raising())
    with pytest.raises(ConnectionError):  # the batch processor logs it, as without the watch
        exporter.export([object()])  # type: ignore[list-item]
    assert exporter.watch.dropped == 1 and "1 span dropped so far" in capsys.readouterr().err


class Hanging(SpanExporter):
    """A backend that never answers: export blocks until the test ends."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.shut = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(60)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.shut += 1


def test_the_flush_at_exit_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    hanging = Hanging()
    exporter = _backend.WatchedSpanExporter(hanging)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    try:
        for _ in range(5):
            provider.get_tracer("t").start_span("s").end()
        start = time.monotonic()
        _backend.shutdown(0.3, handlers=[provider.shutdown], watches=[exporter.watch])
        took = time.monotonic() - start
        assert took < 0.3 + _backend.GRACE_S + 5.0, took  # the bound, with a margin for a loaded machine
        assert hanging.shut == 1  # shut down at the bound (ends OTLP retry waits), once
        err = capsys.readouterr().err
        assert "exports of traces to Hanging fail (still unanswered when the flush at exit ran out of time)" in err
        assert "5 spans dropped so far" in err
        assert "the flush at exit stopped after 0.3 s (DBPERF_SHUTDOWN_TIMEOUT_MS)" in err
        assert f"process {os.getpid()} exits; failed exports dropped 5 spans in all." in err
    finally:
        hanging.release.set()
    time.sleep(0.1)
    assert exporter.watch.dropped == 5  # the late answer is not counted twice
    assert "exports of traces" not in capsys.readouterr().err


def test_after_stop_retrying_the_otlp_exporter_makes_one_attempt() -> None:
    """The flush at exit makes one attempt per export: the OTLP/HTTP exporter's retry wait is ended
    (its client's shutdown event from SDK 1.45 on, the exporter's own before)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    posts: list[str] = []

    class Unavailable(BaseHTTPRequestHandler):  # 503: a retryable answer
        def do_POST(self) -> None:  # noqa: N802
            posts.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    provider = TracerProvider(shutdown_on_exit=False)
    span = provider.get_tracer("t").start_span("s")
    span.end()
    try:
        otlp = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{server.server_port}/v1/traces", timeout=30)
        exporter = _backend.WatchedSpanExporter(otlp)
        exporter.watch.stop_retrying()
        assert exporter.export([span]) is SpanExportResult.FAILURE
        assert posts == ["/v1/traces"]  # without the stop: retried after 1, 2, 4, 8 s
    finally:
        server.shutdown()
        server.server_close()


def test_a_quick_flush_is_not_cut(capsys: pytest.CaptureFixture[str]) -> None:
    class Quick(Failing):
        def __init__(self) -> None:
            super().__init__()
            self.ok, self.exported = True, 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

    quick = Quick()
    exporter = _backend.WatchedSpanExporter(quick)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    for _ in range(700):  # two batches
        provider.get_tracer("t").start_span("s").end()
    _backend.shutdown(5.0, handlers=[provider.shutdown], watches=[exporter.watch])
    assert quick.exported == 700 and not capsys.readouterr().err


# ---- end to end: gunicorn -w 2, SIGTERM to the master ---------------------------------------------


@pytest.fixture
def app_db(tmp_path: Path) -> str:
    from models import seed

    url = f"sqlite:///{tmp_path / 'app.db'}"
    seed(create_engine(url))
    return url


def _env(receiver: Any, app_db: str, endpoint: str, **extra: str) -> dict[str, str]:
    return base_env(
        receiver,
        APP_DB_URL=app_db,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="otlp",
        **extra,
    )


def _traffic(url: str, n: int = 20) -> None:
    for i in range(n):
        assert get(f"{url}/author/{i % 8 + 1}")[0] == 200
    assert get(f"{url}/slow")[0] == 200  # logs a warning: the app's own log record


def _sigterm(srv: dict[str, Any]) -> float:
    """SIGTERM to the master only, as Kubernetes or systemd send it; seconds until it has exited."""
    proc = srv["proc"]
    start = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    return time.monotonic() - start


def _lines(output: str) -> Counter[tuple[str, str]]:
    return Counter((m[3], m[1]) for m in LINE.finditer(output))


def _wait_for_output(srv: dict[str, Any], needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in server_output(srv):
        assert time.monotonic() < deadline, f"no {needle!r} in {server_output(srv)[-3000:]}"
        time.sleep(0.2)


def _check_lines(output: str, endpoint: str, master: int) -> Counter[tuple[str, str]]:
    said = _lines(output)
    assert said, output[-3000:]
    assert set(said.values()) == {1}, said  # once per signal and process, however many exports failed
    assert {signal for _, signal in said} == {"traces", "metrics", "logs"}, said
    assert len({pid for pid, signal in said if signal == "metrics"}) == 3, said  # master and both workers
    assert str(master) in {pid for pid, _ in said}
    assert all(m[2].startswith(endpoint + "/v1/") for m in LINE.finditer(output))
    return said


def test_closed_port_said_once_per_signal_and_a_quick_exit(receiver, app_db: str) -> None:  # type: ignore[no-untyped-def]
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = _env(receiver, app_db, endpoint)  # the SDK's own export timeout and retries (10 s)
    with serve("gunicorn", APP, env, "-w", "2", "--graceful-timeout", "30") as srv:
        _traffic(srv["url"])
        # said while the app runs: the first batch fails once its retries are spent (about 7 s)
        _wait_for_output(srv, "otel-dbperf: exports of traces to")
        _traffic(srv["url"])  # more failing exports, under way at exit
        took = _sigterm(srv)
        output = server_output(srv)
    assert took < BOUND_S + MARGIN_S, (took, output[-3000:])
    _check_lines(output, endpoint, srv["proc"].pid)
    assert "the flush at exit stopped" not in output  # refused at once, no retry at exit: the bound is not needed
    assert re.search(r"exits; failed exports dropped \d+ spans?, \d+ metric points?", output), output[-3000:]
    assert "Traceback" not in output and "internal error" not in output, output[-3000:]


def test_black_hole_exit_is_bounded(receiver, app_db: str) -> None:  # type: ignore[no-untyped-def]
    hole = BlackHole()
    try:
        env = _env(receiver, app_db, hole.endpoint)
        with serve("gunicorn", APP, env, "-w", "2", "--graceful-timeout", "30") as srv:
            _traffic(srv["url"])
            took = _sigterm(srv)
            output = server_output(srv)
    finally:
        hole.close()
    assert hole.accepted  # the exporters did connect, and were never answered
    assert took < BOUND_S + MARGIN_S, (took, output[-3000:])
    said = _check_lines(output, hole.endpoint, srv["proc"].pid)
    assert output.count("the flush at exit stopped after 2 s (DBPERF_SHUTDOWN_TIMEOUT_MS)") == len(
        {pid for pid, _ in said}
    ), output[-3000:]
    assert "still unanswered when the flush at exit ran out of time" in output
    assert "Traceback" not in output and "internal error" not in output, output[-3000:]


def test_live_backend_gets_the_flush_at_exit(receiver, app_db: str) -> None:  # type: ignore[no-untyped-def]
    # nothing is exported before exit (however long a loaded machine takes to start and serve): everything
    # the receiver gets comes from the flush at exit
    env = _env(
        receiver, app_db, receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="600000", OTEL_METRIC_EXPORT_INTERVAL="600000"
    )
    with serve("gunicorn", APP, env, "-w", "2", "--graceful-timeout", "30") as srv:
        _traffic(srv["url"])
        assert not receiver.spans and not receiver.metrics
        took = _sigterm(srv)
        output = server_output(srv)
    assert took < BOUND_S + MARGIN_S, (took, output[-3000:])
    assert "otel-dbperf: exports of" not in output and "flush at exit stopped" not in output, output[-3000:]
    routes = Counter(s["attributes"].get("http.route") for s in receiver.spans if s["kind"] == "SERVER")
    assert routes["/author/<int:author_id>"] == 20 and routes["/slow"] == 1, routes
    instances = {p["resource"].get("service.instance.id") for p in receiver.metrics}
    assert len(instances) >= 2, instances  # both workers flushed their metrics (and the master its own)
    assert any(r["body"] == "slow endpoint called" for r in receiver.logs)
