"""Run by tests/test_guard_flask.py with --dbperf (under xdist); the expected outcome is in each name."""

from __future__ import annotations

import pytest
import shop
from sqlalchemy import select
from sqlalchemy.orm import Session


def test_n_plus_one_request_fails(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors").status_code == 200


def test_jinja2_template_n_plus_one_fails(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors/page").status_code == 200


def test_fixed_request_passes(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors/fixed").status_code == 200


def test_many_requests_of_one_query_each_pass(client) -> None:  # type: ignore[no-untyped-def]
    for author_id in range(1, 9):
        assert client.get(f"/authors/{author_id}").status_code == 200


def test_n_plus_one_in_the_test_itself_fails() -> None:
    with Session(shop.engine) as session:
        for author_id in range(1, 7):
            session.execute(select(shop.Book.title).where(shop.Book.author_id == author_id)).all()  # line: own


def test_three_repeats_here_pass_a() -> None:
    with Session(shop.engine) as session:
        for author_id in range(1, 4):
            session.execute(select(shop.Book.title).where(shop.Book.author_id == author_id)).all()


def test_three_repeats_here_pass_b() -> None:  # with test _a: six repeats, if counted across tests
    with Session(shop.engine) as session:
        for author_id in range(1, 4):
            session.execute(select(shop.Book.title).where(shop.Book.author_id == author_id)).all()


@pytest.mark.dbperf(allow_n_plus_one=True)
def test_allowed_n_plus_one_passes(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors").status_code == 200


@pytest.mark.dbperf(allow_n_plus_one=True)
def test_max_queries_block_fails(client, dbperf) -> None:  # type: ignore[no-untyped-def]
    with dbperf.max_queries(3):
        client.get("/authors")


def test_max_queries_block_passes(client, dbperf) -> None:  # type: ignore[no-untyped-def]
    with dbperf.max_queries(2):
        client.get("/authors/fixed")
    assert dbperf.query_count == 2


@pytest.mark.dbperf(max_queries=2)
def test_max_queries_marker_passes(client) -> None:  # type: ignore[no-untyped-def]
    client.get("/authors/fixed")


@pytest.mark.dbperf(max_duplicates=0)
def test_max_duplicates_marker_fails(client) -> None:  # type: ignore[no-untyped-def]
    client.get("/authors/twice/3")


def test_own_failure_is_kept_fails(client) -> None:  # type: ignore[no-untyped-def]
    client.get("/authors")
    raise AssertionError("the test's own failure")
