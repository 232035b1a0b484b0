"""A test suite for otel-dbperf's demo shop (otel_dbperf/report/demo/shop.py), for bench/pytest_guard.py:
the same suite timed with and without --dbperf. Its /orders tests fail under --dbperf (the demo's N+1)."""

from __future__ import annotations

import os
import tempfile

import pytest

_DIR = tempfile.mkdtemp(prefix="dbperf-guard-demo-")
os.environ["SHOP_DB_URL"] = f"sqlite:///{_DIR}/shop.db"

from otel_dbperf.report.demo import shop  # noqa: E402 - reads SHOP_DB_URL at import


@pytest.fixture(scope="session")
def client():  # type: ignore[no-untyped-def]
    shop.seed(2_000)
    return shop.app.test_client()
