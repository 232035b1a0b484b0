"""Run by tests/test_guard_django.py with ``dbperf = true`` in pytest.ini (pytest-django, PostgreSQL);
the expected outcome is in each name."""

from __future__ import annotations

import pytest


@pytest.mark.django_db
def test_view_n_plus_one_fails(client, authors) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors/").status_code == 200


@pytest.mark.django_db
def test_template_n_plus_one_fails(client, authors) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors/template/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_transactional_test_n_plus_one_fails(client, authors) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors/").status_code == 200


@pytest.mark.django_db
def test_prefetched_passes(client, authors) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors/fixed/").status_code == 200


@pytest.mark.django_db
def test_one_request_per_author_passes(client, authors) -> None:  # type: ignore[no-untyped-def]
    for author in authors:
        assert client.get(f"/authors/{author.id}/").status_code == 200


@pytest.mark.django_db
@pytest.mark.dbperf(max_queries=2)
def test_prefetched_within_max_queries_passes(client, authors) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors/fixed/").status_code == 200


@pytest.mark.django_db
def test_max_queries_fixture_fails(client, authors, dbperf) -> None:  # type: ignore[no-untyped-def]
    with dbperf.max_queries(1):
        client.get("/authors/fixed/")
