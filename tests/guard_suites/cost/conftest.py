from __future__ import annotations

import collections
import gc
import json
import os
import sys

import pytest

from otel_dbperf import _guard

_guard.RERAISE = True  # the guard's own bugs fail these tests loudly

import library  # noqa: E402 - after the guard's set-up: its engine and app are traced

SPANS: collections.Counter[str] = collections.Counter()
ANALYSED: list[str] = []  # the statements otel-dbperf analysed (fingerprint, summary, sanitized text)


def _counting_analysis(analysis):  # type: ignore[no-untyped-def]
    def counted(query, *args, **kwargs):  # type: ignore[no-untyped-def]
        ANALYSED.append(str(query.statement))
        return analysis(query, *args, **kwargs)

    return counted


from otel_dbperf._pipeline.record import Query  # noqa: E402

Query.analysis = _counting_analysis(Query.analysis)  # type: ignore[method-assign]


class _Counting:
    """Counts the spans made, by instrumentation scope."""

    def on_start(self, span, parent_context=None):  # type: ignore[no-untyped-def]
        SPANS[span.instrumentation_scope.name] += 1

    def _on_ending(self, span):  # type: ignore[no-untyped-def]
        pass

    def on_end(self, span):  # type: ignore[no-untyped-def]
        pass

    def shutdown(self):  # type: ignore[no-untyped-def]
        pass

    def force_flush(self, timeout_millis=30000):  # type: ignore[no-untyped-def]
        return True


def pytest_sessionstart(session: pytest.Session) -> None:
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what only the garbage collector frees is kept in gc.garbage, counted below


def pytest_configure(config: pytest.Config) -> None:
    from opentelemetry import trace

    trace.get_tracer_provider().add_span_processor(_Counting())  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def client():  # type: ignore[no-untyped-def]
    library.seed()
    return library.app.test_client()


@pytest.fixture
def set_up_query():  # type: ignore[no-untyped-def]
    with library.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 'set-up only'").all()
    yield
    with library.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 'tear-down only'").all()


def pytest_sessionfinish(session: pytest.Session) -> None:
    probe = sys.modules.get("cost_probe")
    gc.collect()
    cyclic = sum(1 for o in gc.garbage if type(o).__module__.startswith("otel_dbperf."))
    gc.set_debug(0)
    gc.garbage.clear()
    facts = {
        "spans": dict(SPANS),
        "modules": sorted(m for m in sys.modules if m.startswith(("otel_dbperf", "opentelemetry.sdk.metrics"))),
        "checked": sorted(probe.CHECKED) if probe is not None else None,
        "cyclic": cyclic,
        "analysed": ANALYSED,
    }
    with open(os.environ["GUARD_COST_OUT"], "w") as out:
        json.dump(facts, out)
