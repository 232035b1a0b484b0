"""The pytest guard on a FastAPI suite with async tests (tests/guard_suites/fastapi, run once with
--dbperf): FastAPI's TestClient, httpx's ASGI transport under pytest-asyncio and under anyio's
plugin, async SQLAlchemy on asyncpg (PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from support.guard_run import Run, clean_env, expected_outcome, run_suite, suite_line


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, pg_user: str) -> Iterator[Run]:
    name = f"dbperf_guard_fastapi_{os.getpid()}"
    server = f"host=127.0.0.1 port=5432 user={pg_user} dbname=test"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        env = clean_env(GUARD_PG_URL=f"postgresql+asyncpg://{pg_user}@127.0.0.1:5432/{name}")
        yield run_suite("fastapi", tmp_path_factory.mktemp("guard-fastapi"), "--dbperf", env=env)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_each_test_has_the_outcome_its_name_says(run: Run) -> None:
    assert len(run.outcomes) == 9, run.output
    assert {name: expected_outcome(name) for name in run.outcomes} == run.outcomes, run.output


def test_the_test_clients_requests_are_roll_up_roots(run: Run) -> None:
    message = run.messages["test_test_client_n_plus_one_fails"]
    assert "GET /authors/loop: SELECT books repeated 8 times" in message
    assert f"at shop.py:{suite_line('fastapi', 'shop.py', 'loop')}\n" in message
    assert "statement: SELECT books.title FROM books WHERE books.author_id = $1::INTEGER" in message
    for name in ("test_test_client_one_request_per_author_passes", "test_anyio_one_request_per_author_passes"):
        assert run.outcomes[name] == "passed"


def test_async_lazy_loads_name_the_relationship_under_both_async_plugins(run: Run) -> None:
    for name in ("test_asyncio_lazy_load_n_plus_one_fails", "test_anyio_lazy_load_n_plus_one_fails"):
        message = run.messages[name]
        assert "GET /authors: SELECT books repeated 8 times" in message
        assert f"at shop.py:{suite_line('fastapi', 'shop.py', 'lazy')}\n" in message
        assert "relationship: Author.books" in message
        assert "fix: selectinload(Author.books)" in message


def test_an_async_test_without_server_span_is_its_own_roll_up_root(run: Run) -> None:
    message = run.messages["test_asyncio_n_plus_one_in_the_test_itself_fails"]
    assert "the test itself: SELECT books repeated 6 times" in message
    assert f"at test_shop.py:{suite_line('fastapi', 'test_shop.py', 'own')}\n" in message
    anyio = run.messages["test_anyio_n_plus_one_in_the_test_itself_fails"]
    assert "the test itself: SELECT books repeated 6 times" in anyio
