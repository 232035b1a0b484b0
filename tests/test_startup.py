"""Startup: every step independent, internal errors visible, SQLAlchemy without greenlet, OTEL_CONFIG_FILE.

The stock-install tests (tests/test_stock_install.py) run the same paths in a venv built the
way users build theirs; these run in the test venv, in process or through real
``opentelemetry-instrument`` subprocesses (greenlet hidden by a shadow module).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, BIN, base_env, get, serve

from otel_dbperf import DbPerfSpanProcessor, _guard, _hooks, _runtime, _sqla
from otel_dbperf import attributes as A
from otel_dbperf._pipeline import Thresholds
from otel_dbperf._sqla import instrument as _sqlalchemy
from otel_dbperf.profiler import startup
from otel_dbperf.settings import Settings

# ---- SQLAlchemy without greenlet ------------------------------------------------------------

CONTRIB_ROUND_TRIP = """
import json, sqlalchemy

def wrapped(fn):  # wrapt's FunctionWrapper (SQLAlchemy's own decorators set __wrapped__ too)
    return type(fn).__name__.endswith("FunctionWrapper")
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from otel_dbperf._sqla import instrument as _sqlalchemy

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
instrumentor = SQLAlchemyInstrumentor()
out = {"async": _sqlalchemy.async_available(), "prepared": _sqlalchemy.prepare(instrumentor)}
instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
out["instrumented"] = instrumentor.is_instrumented_by_opentelemetry
out["wrapped"] = wrapped(sqlalchemy.create_engine)
if out["async"]:
    import sqlalchemy.ext.asyncio
    out["async_wrapped"] = wrapped(sqlalchemy.ext.asyncio.create_async_engine)
engine = sqlalchemy.create_engine("sqlite://")
with engine.connect() as conn:
    conn.execute(sqlalchemy.text("SELECT 1")).all()
out["spans"] = [s.name for s in exporter.get_finished_spans()]
instrumentor.uninstrument()
out["after_uninstrument"] = instrumentor.is_instrumented_by_opentelemetry
out["still_wrapped"] = [
    name for name, fn in [("create_engine", sqlalchemy.create_engine),
                          ("engine.create_engine", sqlalchemy.engine.create_engine),
                          ("Engine.connect", vars(sqlalchemy.engine.Engine)["connect"])]
    if wrapped(fn)
]
exporter.clear()
for e in (engine, sqlalchemy.create_engine("sqlite://")):
    with e.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT 2")).all()
out["spans_after_uninstrument"] = len(exporter.get_finished_spans())
print(json.dumps(out))
"""


@pytest.fixture
def no_greenlet(tmp_path: Path) -> str:
    """A PYTHONPATH entry whose ``greenlet`` fails to import, as when it is not installed."""
    shadow = tmp_path / "no_greenlet"
    shadow.mkdir()
    (shadow / "greenlet.py").write_text("raise ImportError(\"No module named 'greenlet' (hidden by the test)\")\n")
    return str(shadow)


@pytest.mark.parametrize("greenlet", [False, True], ids=["without-greenlet", "with-greenlet"])
def test_contrib_instrumentor_is_whole_and_undoable(greenlet: bool, no_greenlet: str) -> None:
    env = {"PATH": str(BIN)} if greenlet else {"PATH": str(BIN), "PYTHONPATH": no_greenlet}
    proc = subprocess.run(
        [str(BIN / "python"), "-c", CONTRIB_ROUND_TRIP], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["async"] is greenlet and out["prepared"] is not greenlet
    assert out["instrumented"] is True and out["wrapped"] is True  # not half-applied and marked uninstrumented
    assert out["spans"] == ["connect", "SELECT"], out
    if greenlet:
        assert out["async_wrapped"] is True  # with greenlet contrib does all of it, async too
    assert out["after_uninstrument"] is False and out["still_wrapped"] == []
    assert out["spans_after_uninstrument"] == 0


def test_without_greenlet_opentelemetry_instrument_enriches_and_explains(
    receiver: Any, tmp_path: Path, no_greenlet: str
) -> None:
    env = base_env(receiver, PYTHONPATH=no_greenlet, DBPERF_EXPLAIN="true", DBPERF_SLOW_QUERY_THRESHOLD_MS="0")
    proc = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "script_app.py", str(tmp_path / "s.db")],
        cwd=APPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    spans = receiver.wait_for(lambda s: any(e["name"] == A.EVENT_EXPLAIN for x in s for e in x["events"]))
    orm = [s for s in spans if s["scope"] == "opentelemetry.instrumentation.sqlalchemy"]
    assert orm and all(A.QUERY_FINGERPRINT in s["attributes"] for s in orm if "db.query.text" in s["attributes"])
    explained = [e for s in orm for e in s["events"] if e["name"] == A.EVENT_EXPLAIN]
    assert explained and explained[0]["attributes"]["dbperf.explain.database"] == "sqlite"


# ---- each startup step independent ----------------------------------------------------------


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> None:
    """Internal errors swallowed and reported, as outside pytest; a fresh once-per-type memory."""
    monkeypatch.setattr(_guard, "RERAISE", False)
    monkeypatch.setattr(_guard, "_seen", set())


def otel_logging_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """As under opentelemetry-instrument: the root logger's only handler is the SDK's LoggingHandler.

    Called in the test body: pytest adds its capture handlers to the root logger for the call phase.
    """
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler

    monkeypatch.setattr(logging.getLogger(), "handlers", [LoggingHandler(logger_provider=LoggerProvider())])
    logger = logging.getLogger("otel_dbperf")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)


def _boom(*_: Any) -> Any:
    raise RuntimeError("secret-value-42")


def test_post_instrument_a_failing_sqlalchemy_step_leaves_the_listeners_running(
    production: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    otel_logging_only(monkeypatch)
    ran: list[str] = []
    monkeypatch.setattr(_sqlalchemy, "ensure_instrumented", _boom)
    monkeypatch.setattr(_hooks, "start_sqlalchemy", lambda settings: ran.append("listeners"))
    monkeypatch.setattr(_runtime.runtime, "configured", True)
    _hooks.post_instrument()
    assert ran == ["listeners"]
    err = capsys.readouterr().err
    assert "internal error in SQLAlchemy instrumentation (RuntimeError at" in err and "no SQLAlchemy spans" in err
    assert "secret-value-42" not in err  # the type and place, never the message


def test_post_instrument_a_failing_explain_step_is_reported_not_silent(
    production: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    otel_logging_only(monkeypatch)
    ran: list[str] = []
    monkeypatch.setattr(_sqlalchemy, "ensure_instrumented", lambda settings: ran.append("sqlalchemy"))
    monkeypatch.setattr(_sqla, "install_explain", _boom)
    monkeypatch.setattr(_sqla, "_install_duplicates", lambda records: ran.append("duplicates"))
    monkeypatch.setattr(_sqla, "install_pools", lambda *a: ran.append("pools"))
    monkeypatch.setattr(_runtime.runtime, "configured", True)
    monkeypatch.setattr(_runtime.runtime, "processor", DbPerfSpanProcessor(Settings()))
    monkeypatch.setattr(_hooks, "current_settings", lambda: Settings(explain=True))
    _hooks.post_instrument()
    assert ran == ["sqlalchemy", "duplicates", "pools"]  # the steps after a failed one still run
    assert "no EXPLAIN plans (DBPERF_EXPLAIN)" in capsys.readouterr().err


class _Recorder:
    def __init__(self, thresholds: Any, meter_provider: Any, sinks: Any, version: str) -> None:
        self.meter_provider, self.sinks = meter_provider, list(sinks)

    def submit(self, *_: Any) -> None:
        pass

    def drain(self) -> None:
        pass

    def drain_at_exit(self) -> None:
        pass


class _Processor:
    deriver: Any = None
    thresholds = Thresholds.from_settings(Settings())

    def attach_deriver(self, submit: Any) -> None:
        self.deriver = submit


@pytest.fixture
def derived(monkeypatch: pytest.MonkeyPatch) -> _Processor:
    """start_derived with a real SDK MeterProvider and a logs exporter, recording what it starts."""
    import atexit

    import opentelemetry._logs
    import opentelemetry.metrics
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.metrics import MeterProvider

    from otel_dbperf import _prefork
    from otel_dbperf._pipeline import derive

    processor = _Processor()
    monkeypatch.setattr(_runtime.runtime, "processor", processor)
    monkeypatch.setattr(_runtime.runtime, "metric_exporters", "otlp")
    monkeypatch.setattr(_runtime.runtime, "deriver", None)
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
    monkeypatch.setattr(opentelemetry.metrics, "get_meter_provider", lambda: MeterProvider())
    monkeypatch.setattr(opentelemetry._logs, "get_logger_provider", lambda: LoggerProvider())
    monkeypatch.setattr(derive, "build_deriver", _Recorder)
    monkeypatch.setattr(_prefork, "ForkHooks", lambda *a: None)
    monkeypatch.setattr(atexit, "register", lambda fn: fn)
    monkeypatch.setattr(startup, "start_profiler", lambda *_: "profiler-sink")
    return processor


SETTINGS = Settings.from_env({"DBPERF_PROFILER_ADDR": "127.0.0.1:0"})


def test_start_derived_a_failing_profiler_leaves_metrics_and_logs(
    production: None, derived: _Processor, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    otel_logging_only(monkeypatch)
    monkeypatch.setattr(startup, "start_profiler", _boom)
    _runtime.start_derived(SETTINGS)
    deriver = _runtime.runtime.deriver
    assert deriver.meter_provider is not None
    assert [type(s).__name__ for s in deriver.sinks] == ["SlowQueryLog"]
    assert derived.deriver is not None
    assert "internal error in profiler API setup" in capsys.readouterr().err


def test_start_derived_a_failing_slow_query_log_leaves_metrics_and_profiler(
    production: None, derived: _Processor, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    otel_logging_only(monkeypatch)
    from otel_dbperf._pipeline import slowlog as _slowlog

    monkeypatch.setattr(_slowlog, "SlowQueryLog", _boom)
    _runtime.start_derived(SETTINGS)
    deriver = _runtime.runtime.deriver
    assert deriver.meter_provider is not None and deriver.sinks == ["profiler-sink"]
    assert "no slow-query log records" in capsys.readouterr().err


def test_start_derived_failing_metrics_leave_logs_and_profiler(
    production: None, derived: _Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opentelemetry.metrics

    monkeypatch.setattr(opentelemetry.metrics, "get_meter_provider", _boom)
    _runtime.start_derived(SETTINGS)
    deriver = _runtime.runtime.deriver
    assert deriver.meter_provider is None and len(deriver.sinks) == 2


def test_configurator_steps_are_independent(
    production: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    otel_logging_only(monkeypatch)
    from opentelemetry.sdk._configuration import _OTelSDKConfigurator

    from otel_dbperf import configurator

    seen: dict[str, Any] = {}
    monkeypatch.setattr(_OTelSDKConfigurator, "_configure", lambda self, **kw: seen.setdefault("sdk", kw))
    monkeypatch.setattr(configurator, "sdk_kwargs", _boom)
    monkeypatch.setattr(configurator, "start_derived", _boom)
    monkeypatch.setattr(configurator, "log_effective", lambda settings: seen.setdefault("logged", True))
    monkeypatch.setattr(_runtime.runtime, "configured", False)
    monkeypatch.delenv("OTEL_CONFIG_FILE", raising=False)
    configurator.DbPerfConfigurator()._configure(auto_instrumentation_version="x")
    assert seen["sdk"] == {"auto_instrumentation_version": "x"}  # the SDK still built its providers
    assert _runtime.runtime.configured is True and seen["logged"] is True
    err = capsys.readouterr().err
    assert "span processors" in err and "DB spans are NOT enriched" in err
    assert "no derived metrics, slow-query logs or profiler API" in err


def test_explain_without_sqlalchemy_says_there_will_be_no_plans(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    otel_logging_only(monkeypatch)
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # import fails, as when it is not installed
    settings = Settings.from_env({"DBPERF_EXPLAIN": "true"})
    _sqla.install_explain(settings, Thresholds.from_settings(settings))
    assert _sqla.explainer() is None
    assert "DBPERF_EXPLAIN=true but SQLAlchemy is not installed" in capsys.readouterr().err


# ---- internal errors on stderr --------------------------------------------------------------


def test_internal_errors_print_one_line_per_type_when_logs_go_only_to_opentelemetry(
    production: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    otel_logging_only(monkeypatch)
    for exc in (ValueError("a-secret"), ValueError("b-secret"), KeyError("c-secret")):
        try:
            raise exc
        except Exception as caught:  # noqa: BLE001
            _guard.internal_error("export", caught)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("otel-dbperf: internal error in export (ValueError at test_startup.py:")
    assert lines[0].endswith("that span is exported unenriched; the application is unaffected")
    assert "KeyError" in lines[1]
    assert not any("secret" in line for line in lines)


def test_internal_errors_print_whatever_the_log_level(
    production: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    otel_logging_only(monkeypatch)
    logger = logging.getLogger("otel_dbperf")
    handler = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.CRITICAL)  # as DBPERF_LOG_LEVEL=CRITICAL
    _guard.internal_error("metrics", OSError("x"))
    err = capsys.readouterr().err
    assert err.count("internal error in metrics (OSError at ?): that span's metrics are skipped") == 1


# ---- OTEL_CONFIG_FILE -------------------------------------------------------------------------

CONFIG_FILE = """\
file_format: "1.0"
tracer_provider:
  processors:
    - simple:
        exporter:
          console: {}
"""


APP = """
import sqlalchemy
from opentelemetry import trace

engine = sqlalchemy.create_engine("sqlite://")
with trace.get_tracer("app").start_as_current_span("GET /script", kind=trace.SpanKind.SERVER):
    with engine.connect() as conn:
        print("app output", conn.execute(sqlalchemy.text("SELECT 40 + 2")).scalar())
getattr(trace.get_tracer_provider(), "force_flush", lambda: None)()
"""


def _run_with_config_file(receiver: Any, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "otel.yaml"
    config.write_text(CONFIG_FILE)
    env = base_env(receiver, OTEL_CONFIG_FILE=str(config), **extra)
    return subprocess.run(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "-c", APP],
        cwd=APPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_otel_config_file_is_refused_loudly_and_the_app_runs(receiver: Any, tmp_path: Path) -> None:
    proc = _run_with_config_file(receiver, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "app output 42\n"  # the app's own output is intact
    ours = [line for line in proc.stderr.splitlines() if line.startswith("otel-dbperf:")]
    assert len(ours) == 1, proc.stderr
    assert "OTEL_CONFIG_FILE=" in ours[0] and "NOT enriched" in ours[0] and "unset OTEL_CONFIG_FILE" in ours[0]
    assert "another OpenTelemetry configurator ran" not in proc.stderr


def test_otel_config_file_with_declarative_configuration_installed(receiver: Any, tmp_path: Path) -> None:
    """The SDK's declarative path itself (``opentelemetry-configuration`` cannot be installed beside
    contrib 0.66b1: it needs SDK 1.45.2 and semantic-conventions 0.66b2): a stand-in package whose
    ``configure_sdk`` builds a tracer provider exporting OTLP to the receiver, as a file would."""
    package = tmp_path / "site" / "opentelemetry" / "configuration"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor

            def load_config_file(path):
                return open(path).read()

            def configure_sdk(config):
                provider = TracerProvider()
                provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
                trace.set_tracer_provider(provider)
            """
        )
    )
    proc = _run_with_config_file(receiver, tmp_path, PYTHONPATH=str(tmp_path / "site"))
    assert proc.returncode == 0, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("otel-dbperf:")]
    assert len(ours) == 1 and "NOT enriched" in ours[0], proc.stderr
    spans = receiver.wait_for(lambda s: any(x["name"] == "GET /script" for x in s))
    orm = [s for s in spans if s["scope"] == "opentelemetry.instrumentation.sqlalchemy"]
    assert orm, "SQLAlchemy 2.1 is still instrumented"
    assert not any(k.startswith(("dbperf.", "code.")) for s in spans for k in s["attributes"])


# ---- opentelemetry-distro installed beside us -----------------------------------------------


def test_no_warning_that_opentelemetry_distros_configurator_was_passed_over(receiver: Any, tmp_path: Path) -> None:
    from importlib.metadata import entry_points

    assert "configurator" in {ep.name for ep in entry_points(group="opentelemetry_configurator")}
    # with the logging instrumentation off, the loader's warnings reach stderr through logging's last resort
    env = base_env(receiver, OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="false")
    proc = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "script_app.py", str(tmp_path / "s.db")],
        cwd=APPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Configuration of configurator not loaded" not in proc.stderr, proc.stderr


def test_the_passed_over_filter_drops_exactly_that_line() -> None:
    from otel_dbperf.distro import _PassedOverFilter

    def record(msg: str, *args: Any) -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, __file__, 1, msg, args, None)

    keep = _PassedOverFilter().filter
    assert not keep(record("Configuration of %s not loaded, %s already loaded", "configurator", "otel_dbperf"))
    assert keep(record("Configuration of %s not loaded, %s already loaded", "other", "otel_dbperf"))
    assert keep(record("Configuration of %s not loaded, %s already loaded", "configurator", "other"))
    assert keep(record("Configuration of %s failed", "configurator"))
    assert keep(record("%s", ["unhashable"]))


# ---- metric views --------------------------------------------------------------------------


def test_default_views_cause_no_conflicting_identities(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otel_dbperf.metrics import DBAPI_SCOPES, METER_NAME, default_views

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], views=default_views())
    with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk.metrics"):
        for scope in (*DBAPI_SCOPES, METER_NAME):  # every DB-API driver in one process, and ours
            provider.get_meter(scope).create_histogram("db.client.operation.duration", unit="s").record(0.01)
        reader.get_metrics_data()
    assert not [r for r in caplog.records if "conflicting" in r.getMessage()]
    names = {m.name for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert names == {"db.client.operation.duration"}  # the DB-API copies stay dropped
    provider.shutdown()


def test_flask_with_two_drivers_and_metrics_logs_no_view_conflict(receiver: Any, pg_dsn: str, tmp_path: Path) -> None:
    env = base_env(
        receiver,
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_METRIC_EXPORT_INTERVAL="200",
        OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="false",  # SDK warnings reach stderr
        TWO_DRIVERS_PG=pg_dsn,
        TWO_DRIVERS_SQLITE=str(tmp_path / "two.db"),
    )
    with serve("gunicorn", "two_drivers_app:app", env) as srv:
        assert get(srv["url"] + "/both")[0] == 200
        receiver.wait_for_metrics(
            lambda points: (
                {p["attributes"].get("db.system.name") for p in points if p["scope"] == "otel_dbperf"}
                >= {"sqlite", "postgresql"}
            )
        )
    assert "conflicting metrics identities" not in srv["output"], srv["output"]
