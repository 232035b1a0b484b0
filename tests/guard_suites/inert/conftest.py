"""What the run looked like at its end, for tests/test_guard_inert.py (written to $GUARD_INERT_OUT)."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading

import pytest


def pytest_sessionfinish(session: pytest.Session) -> None:
    import flask
    import sqlalchemy

    facts = {
        "plugin_loaded": session.config.pluginmanager.get_plugin("dbperf") is not None,
        "dbperf_option": session.config.getoption("dbperf", default="absent"),
        "opentelemetry_modules": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
        "otel_dbperf_modules": sorted(m for m in sys.modules if m.startswith("otel_dbperf")),
        "environ": dict(os.environ),
        "threads": sorted(t.name for t in threading.enumerate()),
        "flask_class": f"{flask.Flask.__module__}.{flask.Flask.__qualname__}",
        "create_engine_type": type(sqlalchemy.create_engine).__name__,
        "sqlite3_connect": repr(sqlite3.connect),
    }
    with open(os.environ["GUARD_INERT_OUT"], "w") as out:
        json.dump(facts, out)
