"""Run by tests/test_guard_fastapi.py with --dbperf: FastAPI's TestClient, pytest-asyncio and anyio
tests, async SQLAlchemy on asyncpg; the expected outcome is in each name."""

from __future__ import annotations

import httpx
import pytest
import shop
from fastapi.testclient import TestClient
from sqlalchemy import select

client = TestClient(shop.app)


def test_test_client_n_plus_one_fails() -> None:
    assert client.get("/authors/loop").status_code == 200


def test_test_client_fixed_passes() -> None:
    assert client.get("/authors/fixed").status_code == 200


def test_test_client_one_request_per_author_passes() -> None:
    for author_id in range(1, 9):
        assert client.get(f"/authors/{author_id}").status_code == 200


def _async_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=shop.app), base_url="http://testserver")


@pytest.mark.asyncio
async def test_asyncio_lazy_load_n_plus_one_fails() -> None:
    async with _async_client() as http:
        assert (await http.get("/authors")).status_code == 200


@pytest.mark.asyncio
async def test_asyncio_n_plus_one_in_the_test_itself_fails() -> None:
    async with shop.Session() as session:
        for author_id in range(1, 7):
            (await session.scalars(select(shop.Book.title).where(shop.Book.author_id == author_id))).all()  # line: own


@pytest.mark.asyncio
async def test_asyncio_max_queries_block_passes(dbperf) -> None:  # type: ignore[no-untyped-def]
    async with _async_client() as http:
        with dbperf.max_queries(2):
            assert (await http.get("/authors/fixed")).status_code == 200


@pytest.mark.anyio
async def test_anyio_lazy_load_n_plus_one_fails() -> None:
    async with _async_client() as http:
        assert (await http.get("/authors")).status_code == 200


@pytest.mark.anyio
async def test_anyio_one_request_per_author_passes() -> None:
    async with _async_client() as http:
        for author_id in range(1, 9):
            assert (await http.get(f"/authors/{author_id}")).status_code == 200


@pytest.mark.anyio
async def test_anyio_n_plus_one_in_the_test_itself_fails() -> None:
    async with shop.Session() as session:
        for author_id in range(1, 7):
            (await session.scalars(select(shop.Book.title).where(shop.Book.author_id == author_id))).all()
