from __future__ import annotations

import pytest

from otel_dbperf import _guard

_guard.RERAISE = True  # the guard's own bugs fail these tests loudly

import shop  # noqa: E402 - after the guard's set-up: its engine and app are traced


@pytest.fixture(scope="session")
def client():  # type: ignore[no-untyped-def]
    shop.seed()
    return shop.app.test_client()
