from __future__ import annotations

import asyncio

import pytest

from otel_dbperf import _guard

_guard.RERAISE = True  # the guard's own bugs fail these tests loudly

import shop  # noqa: E402 - after the guard's set-up: its engine and app are traced


@pytest.fixture(scope="session", autouse=True)
def _seeded() -> None:
    asyncio.run(shop.seed())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
