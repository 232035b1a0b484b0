"""The pytest guard on a Flask + SQLAlchemy suite (tests/guard_suites/flask), run once with
``-p xdist -n 2 --dbperf --dbperf-report FILE``: N+1 failures with location, relationship and fix,
per-request and per-test counting, the fixture and the marker, the report of both workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.guard_run import Run, expected_outcome, run_suite, suite_line


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    tmp = tmp_path_factory.mktemp("guard-flask")
    report = tmp / "spans.jsonl"
    return run_suite("flask", tmp, "-p", "xdist", "-n", "2", "--dbperf", "--dbperf-report", str(report)), report


def test_each_test_has_the_outcome_its_name_says(run: tuple[Run, Path]) -> None:
    result, _ = run
    assert len(result.outcomes) == 13, result.output
    assert {name: expected_outcome(name) for name in result.outcomes} == result.outcomes, result.output
    assert result.returncode == 1
    assert "2 workers [13 items]" in result.output  # two xdist workers ran them


def test_an_n_plus_one_request_fails_with_location_relationship_and_fix(run: tuple[Run, Path]) -> None:
    message = run[0].messages["test_n_plus_one_request_fails"]
    assert "otel-dbperf: N+1 queries in this test (threshold 5 repeats):" in message
    assert "GET /authors: SELECT books repeated 8 times" in message
    assert f"at shop.py:{suite_line('flask', 'shop.py', 'n+1')}\n" in message
    assert "relationship: Author.books" in message
    assert "fix: selectinload(Author.books)" in message
    assert "statement: SELECT books.id, books.title, books.author_id FROM books WHERE ? = books.author_id" in message


def test_a_jinja2_template_n_plus_one_names_the_template_line_and_the_view(run: tuple[Run, Path]) -> None:
    message = run[0].messages["test_jinja2_template_n_plus_one_fails"]
    template = suite_line("flask", "templates/authors.html", "template #}")
    view = suite_line("flask", "shop.py", "view")
    assert f"at templates/authors.html:{template} (template; view shop.py:{view})\n" in message
    assert "fix: selectinload(Author.books)" in message


def test_a_test_without_server_span_is_its_own_roll_up_root(run: tuple[Run, Path]) -> None:
    message = run[0].messages["test_n_plus_one_in_the_test_itself_fails"]
    assert "the test itself: SELECT books repeated 6 times" in message
    assert f"at test_shop.py:{suite_line('flask', 'test_shop.py', 'own')}\n" in message
    assert "statement: SELECT books.title FROM books WHERE books.author_id = ?" in message
    # eight requests of one query each, and two tests of three repeats each: no N+1
    for name in ("test_many_requests_of_one_query_each_pass", "test_three_repeats_here_pass_a",
                 "test_three_repeats_here_pass_b"):  # fmt: skip
        assert run[0].outcomes[name] == "passed"


def test_the_fixture_and_the_markers_list_the_queries(run: tuple[Run, Path]) -> None:
    result, _ = run
    n1 = suite_line("flask", "shop.py", "n+1")
    block = result.messages["test_max_queries_block_fails"]
    assert "otel-dbperf: 9 queries in this block, at most 3 expected (max_queries):" in block
    assert f"8 x SELECT books.id, books.title, books.author_id FROM books WHERE ? = books.author_id\n" \
           f"        at shop.py:{n1} (8x)" in block  # fmt: skip
    assert "1 x SELECT authors.id, authors.name FROM authors ORDER BY authors.id" in block
    duplicates = result.messages["test_max_duplicates_marker_fails"]
    assert "otel-dbperf: 1 exact duplicate queries in this test" in duplicates
    assert "1 x SELECT authors.name FROM authors WHERE authors.id = ?\n" in duplicates
    assert f"at shop.py:{suite_line('flask', 'shop.py', 'duplicate')}" in duplicates
    # a test's own failure stays its failure; the N+1 is shown beside it
    own = result.messages["test_own_failure_is_kept_fails"]
    assert "AssertionError: the test's own failure" in own and "N+1" not in own
    assert "Captured dbperf call" in result.output


def test_the_report_holds_both_workers_spans_for_otel_dbperf_report(run: tuple[Run, Path]) -> None:
    result, report = run
    assert report.exists(), result.output
    assert not list(report.parent.glob("spans.jsonl.*.part"))
    lines = report.read_text().splitlines()
    roots = 0
    for line in lines:
        for resource_spans in json.loads(line)["resourceSpans"]:
            for scope in resource_spans["scopeSpans"]:
                for span in scope["spans"]:
                    if any(a["key"] == "test.case.name" for a in span["attributes"]):
                        roots += 1
    assert roots == 13
    out = subprocess.run(
        [sys.executable, "-m", "otel_dbperf.report.cli", "report", "--json", str(report)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    findings = {f["route"]: f for f in json.loads(out)["n_plus_one"]}
    assert findings["/authors"]["suggestion"] == "selectinload(Author.books)"
    assert findings["/authors"]["code_location"].endswith(f"shop.py:{suite_line('flask', 'shop.py', 'n+1')}")
    assert findings["test_shop.py::test_n_plus_one_in_the_test_itself_fails"]["max_repeat_count"] == 6
