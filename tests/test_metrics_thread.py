"""Metrics add nothing per query on the request thread (design.md section 6).

Under ``OTEL_SEMCONV_STABILITY_OPT_IN=database`` (a distro default) contrib's DB-API
instrumentations record two histograms per query on the app's thread. otel-dbperf moves that
to its derivation thread: the same instruments, attributes and views, so the same series reach
the exporter. Each test runs a real app under ``opentelemetry-instrument`` against PostgreSQL and
counts the metric measurements its main thread takes (the SDK's instruments, wrapped in the app).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import base_env
from otlp_receiver import Receiver

BIN = Path(sys.executable).parent
PSYCOPG = "opentelemetry.instrumentation.psycopg"

#: the app: three SELECTs of 1, 2 and 3 rows and one failing statement through psycopg, inside a
#: server span; prints the measurements its main thread took and the trace ids it made
_APP = r"""
import json, sys, threading
import psycopg
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics._internal import instrument as sdk_instrument

taken = []
main = threading.main_thread()
for cls, method in ((sdk_instrument.Histogram, "record"), (sdk_instrument.Counter, "add"),
                    (sdk_instrument.UpDownCounter, "add")):
    def counting(self, *args, _original=getattr(cls, method), **kwargs):
        if threading.current_thread() is main:
            taken.append([self.instrumentation_scope.name, self.name])
        return _original(self, *args, **kwargs)
    setattr(cls, method, counting)

tracer = trace.get_tracer("app")
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    with tracer.start_as_current_span("GET /rows", kind=trace.SpanKind.SERVER) as root:
        for n in (1, 2, 3):
            with conn.cursor() as cur:
                cur.execute("SELECT g FROM generate_series(1, %s) AS g", (n,))
                cur.fetchall()
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT * FROM dbperf_no_such_table")
            except psycopg.Error:
                pass
trace_id = format(root.get_span_context().trace_id, "032x")


def flush():
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        if hasattr(provider, "force_flush"):
            provider.force_flush()


t = threading.Thread(target=flush)
t.start()
t.join()
print(json.dumps({"taken": taken, "trace_id": trace_id}))
"""


def _run(receiver: Receiver, dsn: str, **env: str) -> dict[str, Any]:
    env = base_env(receiver, **{"OTEL_METRICS_EXPORTER": "otlp", "OTEL_METRIC_EXPORT_INTERVAL": "60000", **env})
    out = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "-c", _APP, dsn],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _per_query(taken: list[list[str]]) -> list[list[str]]:
    """What the main thread recorded for contrib's DB-API instrumentation (its per-query metrics)."""
    return [t for t in taken if t[0] == PSYCOPG]


def test_contrib_db_api_metrics_leave_the_request_thread_and_still_reach_the_exporter(
    receiver: Receiver, pg_dsn: str
) -> None:
    found = _run(receiver, pg_dsn)
    assert _per_query(found["taken"]) == []
    points = receiver.wait_for_metrics(lambda ps: any(p["name"] == "db.client.response.returned_rows" for p in ps))
    first = min(p["time"] for p in points)  # the flush's export (the exit's repeats it, cumulative)
    points = [p for p in points if p["time"] == first]
    rows = [p for p in points if p["name"] == "db.client.response.returned_rows"]
    # the series contrib records, as it reached the exporter before (scope, name, unit, labels)
    assert [(p["scope"], p["unit"], p["kind"]) for p in rows] == [(PSYCOPG, "{row}", "histogram")]
    (point,) = rows
    assert point["attributes"] == {
        "db.system.name": "postgresql",
        "db.namespace": pg_dsn.split("dbname=")[1].split()[0],
        "server.address": "127.0.0.1",
        "server.port": 5432,
    }
    assert (point["count"], point["sum"]) == (3, 6.0)  # one per successful query, of its rows
    # recorded in the context of the query's span: exemplars still point at the request's trace
    assert point["exemplars"] and {e["trace_id"] for e in point["exemplars"]} == {found["trace_id"]}
    # contrib's own db.client.operation.duration stays dropped by the default views; ours counts
    assert not [p for p in points if p["name"] == "db.client.operation.duration" and p["scope"] == PSYCOPG]
    ours = [p for p in points if p["name"] == "db.client.operation.duration" and p["scope"] == "otel_dbperf"]
    assert sum(p["count"] for p in ours) == 4
    assert {p["attributes"].get("error.type") for p in ours} == {None, "psycopg.errors.UndefinedTable"}


def test_with_metrics_off_contrib_records_nothing_on_the_request_thread(receiver: Receiver, pg_dsn: str) -> None:
    found = _run(receiver, pg_dsn, OTEL_METRICS_EXPORTER="none")
    assert _per_query(found["taken"]) == []


@pytest.mark.parametrize("exporter", ["otlp", "none"])
def test_plain_opentelemetry_when_disabled(receiver: Receiver, pg_dsn: str, exporter: str) -> None:
    """``DBPERF_ENABLED=false``: contrib's metrics are contrib's, on the request thread as it does them."""
    found = _run(receiver, pg_dsn, DBPERF_ENABLED="false", OTEL_METRICS_EXPORTER=exporter)
    assert sorted(map(tuple, _per_query(found["taken"]))) == sorted(
        [(PSYCOPG, "db.client.operation.duration")] * 4 + [(PSYCOPG, "db.client.response.returned_rows")] * 3
    )


# ---- the queue, in process -------------------------------------------------------------------


class _Cursor:
    rowcount = 4


@pytest.fixture
def contrib(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A DB-API cursor tracer whose two histograms feed an in-memory reader (as under the opt-in)."""
    from types import SimpleNamespace

    from opentelemetry.instrumentation.dbapi import CursorTracer, DatabaseApiIntegration
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otel_dbperf._pipeline import contrib_metrics

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("opentelemetry.instrumentation.sqlite3")
    integration = DatabaseApiIntegration("opentelemetry.instrumentation.sqlite3", "sqlite")
    integration.database = "main"
    integration._duration_histogram = meter.create_histogram("db.client.operation.duration", unit="s")
    integration._returned_rows_histogram = meter.create_histogram("db.client.response.returned_rows", unit="{row}")
    deriver = SimpleNamespace(dropped=0)
    monkeypatch.setattr(contrib_metrics._State, "deriver", deriver)
    monkeypatch.setattr(contrib_metrics._State, "queue", contrib_metrics.deque())
    return SimpleNamespace(tracer=CursorTracer(integration), reader=reader, deriver=deriver, module=contrib_metrics)


def _recorded(reader: Any) -> dict[str, list[tuple[dict[str, Any], int, float]]]:
    found: dict[str, list[tuple[dict[str, Any], int, float]]] = {}
    data = reader.get_metrics_data()  # None: nothing recorded
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                found[m.name] = [(dict(p.attributes), p.count, p.sum) for p in m.data.data_points]
    return found


def test_queued_measurements_are_recorded_as_contrib_records_them(contrib: Any) -> None:
    import time

    contrib.module._deferred(contrib.tracer, _Cursor(), "SELECT", time.perf_counter(), None)
    contrib.module._deferred(contrib.tracer, _Cursor(), "INSERT", time.perf_counter(), KeyError("x"))
    assert _recorded(contrib.reader) == {}  # nothing recorded on the calling thread
    contrib.module.drain()
    found = _recorded(contrib.reader)
    base = {"db.system.name": "sqlite", "db.namespace": "main"}
    assert found["db.client.response.returned_rows"] == [({**base, "db.operation.name": "SELECT"}, 1, 4)]
    durations = {json.dumps(a, sort_keys=True): c for a, c, _ in found["db.client.operation.duration"]}
    assert durations == {
        json.dumps({**base, "db.operation.name": "SELECT"}, sort_keys=True): 1,
        json.dumps({**base, "db.operation.name": "INSERT", "error.type": "KeyError"}, sort_keys=True): 1,
    }


def test_a_full_queue_drops_and_counts_and_a_forked_child_forgets(
    contrib: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setattr(contrib.module, "MAX_QUEUE", 2)
    for _ in range(3):
        contrib.module._deferred(contrib.tracer, _Cursor(), "SELECT", time.perf_counter(), None)
    assert len(contrib.module._State.queue) == 2 and contrib.deriver.dropped == 1
    contrib.module._after_fork_in_child()
    contrib.module.drain()
    assert _recorded(contrib.reader) == {}
