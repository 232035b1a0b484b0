"""Hostile values for every numeric setting: one warning, the default, and telemetry still works."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, BIN, base_env
from opentelemetry.trace import SpanKind
from support.pipeline import Pipeline

from otel_dbperf import Settings
from otel_dbperf import attributes as A
from otel_dbperf._sqla.explain import ExplainConfig, Explainer
from otel_dbperf.metrics import default_views
from otel_dbperf.profiler import QueryHistory
from otel_dbperf.settings import VARIABLES

NUMERIC = [v for v in VARIABLES if v.numeric]
HOSTILE = ["1e308", "inf", "-inf", "nan", "-1", "99999999999999999999", "", "  ", "abc", "1" * 5000]


def test_every_number_is_numeric_with_bounds() -> None:
    numbers = [f.name for f in Settings.__dataclass_fields__.values() if f.type in ("int", "float")]
    assert sorted(v.field for v in NUMERIC) == sorted(numbers)


def _enriched_span(settings: Settings) -> dict[str, Any]:
    """Build the processor as the configurator does, export one DB span inside a request."""
    p = Pipeline(settings)
    provider, tracer, memory = p.provider, p.tracer, p.memory
    with (
        tracer.start_as_current_span("GET /", kind=SpanKind.SERVER),
        tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as db,
    ):
        db.set_attribute("db.system.name", "postgresql")
        db.set_attribute("db.query.text", "SELECT * FROM users WHERE email = 'canary@example.com'")
    provider.shutdown()
    (span,) = [s for s in memory.get_finished_spans() if s.name == "SELECT"]
    return dict(span.attributes or {})


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("var", NUMERIC, ids=[v.env for v in NUMERIC])
def test_hostile_number_warns_once_and_telemetry_still_works(
    var: Any, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        settings = Settings.from_env({var.env: value})
    assert getattr(settings, var.field) == var.default
    (record,) = caplog.records
    message = record.getMessage()
    assert var.env in message and f"default {var.doc_default}" in message
    assert repr(value)[:60] in message
    # everything built from the settings still builds, and spans are enriched
    attrs = _enriched_span(settings)
    assert attrs["db.query.text"] == "SELECT * FROM users WHERE email = ?"
    assert len(attrs[A.QUERY_FINGERPRINT]) == 16 and attrs[A.QUERY_SLOW] is False
    QueryHistory(settings.profiler_max_history)
    default_views(settings.slow_query_threshold_ms)
    Explainer(ExplainConfig(timeout_ms=settings.explain_timeout_ms))


@pytest.mark.parametrize("var", NUMERIC, ids=[v.env for v in NUMERIC])
def test_bounds_themselves_are_accepted(var: Any, caplog: pytest.LogCaptureFixture) -> None:
    parse = var.parse
    with pytest.raises(ValueError, match="from (?P<low>[0-9.e+]+) to (?P<high>[0-9.e+]+)") as info:
        parse("-1")
    low, high = (float(x) for x in str(info.value).split("from ")[1].split(" to "))
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        for edge in (low, high):
            text = str(int(edge)) if edge == int(edge) else repr(edge)
            assert Settings.from_env({var.env: text}) is not None
            assert float(getattr(Settings.from_env({var.env: text}), var.field)) == edge
    assert caplog.records == []
    _enriched_span(Settings.from_env({var.env: str(int(high))}))


def test_app_paths_that_do_not_exist_warn_and_are_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "no" / "such"
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        settings = Settings.from_env({"DBPERF_APP_PATHS": f"{tmp_path},{missing}"})
    assert settings.app_paths == (str(tmp_path), str(missing))
    (record,) = caplog.records
    assert "DBPERF_APP_PATHS" in record.getMessage() and str(missing) in record.getMessage()
    named = record.getMessage().split("no such directory: ")[1]
    assert named.startswith(f"{missing} (")  # the existing one is not named
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        Settings.from_env({"DBPERF_APP_PATHS": str(tmp_path)})
    assert caplog.records == []


WORST = {
    "DBPERF_SLOW_QUERY_THRESHOLD_MS": "1e308",
    "DBPERF_STACKTRACE_THRESHOLD_MS": "inf",
    "DBPERF_STACKTRACE_MAX_FRAMES": "99999999999999999999",
    "DBPERF_STATEMENT_MAX_LENGTH": "nan",
    "DBPERF_N_PLUS_ONE_THRESHOLD": "-1",
    "DBPERF_LONG_TRANSACTION_MS": "1e400",
    "DBPERF_SLOW_QUERY_LOGS_PER_MINUTE": "abc",
    "DBPERF_EXPLAIN_TIMEOUT_MS": "",
    "DBPERF_PROFILER_MAX_HISTORY": "99999999999999999999",
    "DBPERF_SHUTDOWN_TIMEOUT_MS": "-inf",
    "DBPERF_DBMONITOR_INTERVAL": "nan",  # read by otel-dbperf dbmonitor only: the app just warns
    "DBPERF_DBMONITOR_SAMPLE_INTERVAL": "1e308",
    "DBPERF_DBMONITOR_STATEMENTS_INTERVAL": "-1",
    "DBPERF_CPU_BOUND_THRESHOLD_MS": "0",
    "DBPERF_CPU_BOUND_RATIO": "nan",
    "DBPERF_HTTP_N_PLUS_ONE_THRESHOLD": "1",
    "DBPERF_EVENT_LOOP_BLOCKED_MS": "-0.5",
    "DBPERF_SEQUENTIAL_QUERIES_THRESHOLD": "1e3",
}


def test_worst_values_under_opentelemetry_instrument_still_export_enriched_spans(receiver: Any, tmp_path: Path) -> None:
    assert set(WORST) == {v.env for v in NUMERIC}
    env = base_env(receiver, **WORST, DBPERF_PROFILER_ADDR="127.0.0.1:0")
    cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "script_app.py", str(tmp_path / "s.db")]
    proc = subprocess.run(cmd, cwd=APPS, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout.strip().splitlines()[-1])
    assert "Failed to auto initialize" not in proc.stderr and "Traceback" not in proc.stderr
    for name in WORST:
        assert proc.stderr.count(f"for {name} (") == 1, (name, proc.stderr)
    spans = receiver.wait_for(lambda s: any(x["name"] == "GET /script" for x in s))
    db = [s for s in spans if A.QUERY_FINGERPRINT in s["attributes"]]
    assert db and all(A.QUERY_SLOW in s["attributes"] for s in db)
    (root,) = [s for s in spans if s["name"] == "GET /script"]
    assert root["attributes"][A.N_PLUS_ONE_DETECTED] is True  # the default threshold (5) took effect
