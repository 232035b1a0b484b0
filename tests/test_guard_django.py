"""The pytest guard on a Django suite under pytest-django (tests/guard_suites/django: PostgreSQL test
database, a transactional test, Django's test client), turned on by ``dbperf = true`` in its pytest.ini."""

from __future__ import annotations

import pytest
from support.guard_run import Run, clean_env, expected_outcome, run_suite, suite_line


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, pg_user: str) -> Run:
    return run_suite("django", tmp_path_factory.mktemp("guard-django"), env=clean_env(PGUSER=pg_user))


def test_each_test_has_the_outcome_its_name_says(run: Run) -> None:
    assert len(run.outcomes) == 7, run.output
    assert {name: expected_outcome(name) for name in run.outcomes} == run.outcomes, run.output


def test_a_view_n_plus_one_fails_with_its_line_in_the_test_db_and_in_a_transactional_test(run: Run) -> None:
    view = suite_line("django", "library/views.py", "n+1")
    for name in ("test_view_n_plus_one_fails", "test_transactional_test_n_plus_one_fails"):
        message = run.messages[name]
        assert "GET authors/: SELECT library_book repeated 8 times" in message
        assert f"at library/views.py:{view}\n" in message
        assert "Django: select_related or prefetch_related" in message
        assert 'FROM "library_book" WHERE "library_book"."author_id" = %s' in message


def test_a_template_n_plus_one_names_the_template_line_and_the_view(run: Run) -> None:
    message = run.messages["test_template_n_plus_one_fails"]
    template = suite_line("django", "library/templates/library/authors.html", "template #}")
    view = suite_line("django", "library/views.py", "view")
    assert f"at library/templates/library/authors.html:{template} (template; view library/views.py:{view})" in message


def test_the_fixture_lists_the_blocks_queries(run: Run) -> None:
    message = run.messages["test_max_queries_fixture_fails"]
    assert "otel-dbperf: 2 queries in this block, at most 1 expected (max_queries):" in message
    assert '1 x SELECT "library_author"."id", "library_author"."name" FROM "library_author"' in message
    assert 'WHERE "library_book"."author_id" IN (%s, %s, %s, %s, %s, %s, %s, %s)' in message
