"""What ``pytest --dbperf`` leaves out to cost less, and what it keeps: the same verdicts (N+1 with
location, relationship and fix; exact duplicates; a raw driver's queries), without the spans and
listeners no verdict reads. ``--dbperf-report`` keeps every span, as before (the report reads them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.guard_run import Run, clean_env, expected_outcome, run_suite, suite_line

SCOPE_SQLA = "opentelemetry.instrumentation.sqlalchemy"
SCOPE_SQLITE3 = "opentelemetry.instrumentation.sqlite3"
SCOPE_GUARD = "otel_dbperf.pytest"


def _run(tmp: Path, *args: str) -> tuple[Run, dict[str, object]]:
    out = tmp / "facts.json"
    env = clean_env(GUARD_COST_OUT=str(out), PYTHONPATH=str(Path(__file__).parent / "guard_suites" / "cost"))
    result = run_suite("cost", tmp, "-p", "cost_probe", *args, env=env)
    assert out.exists(), result.output
    return result, json.loads(out.read_text())


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, object]]:
    return _run(tmp_path_factory.mktemp("guardcost-lean"), "--dbperf")


def test_the_verdicts_are_kept(lean: tuple[Run, dict[str, object]]) -> None:
    result, _ = lean
    assert {name: expected_outcome(name) for name in result.outcomes} == result.outcomes, result.output
    assert len(result.outcomes) == 5, result.output
    n_plus_one = result.messages["test_n_plus_one_request_fails"]
    assert "GET /authors: SELECT books repeated 8 times" in n_plus_one
    assert f"at library.py:{suite_line('cost', 'library.py', 'n+1')}" in n_plus_one
    assert "relationship: Author.books" in n_plus_one
    assert "fix: selectinload(Author.books)" in n_plus_one
    duplicates = result.messages["test_duplicates_fails"]
    assert "1 exact duplicate queries in this test" in duplicates
    assert f"at test_library.py:{suite_line('cost', 'test_library.py', 'duplicate')}" in duplicates
    raw = result.messages["test_raw_sqlite3_loop_fails"]
    assert "the test itself: SELECT t repeated 6 times" in raw
    assert f"at test_library.py:{suite_line('cost', 'test_library.py', 'raw')}" in raw


def test_no_driver_span_under_sqlalchemy_and_no_root_span(lean: tuple[Run, dict[str, object]]) -> None:
    _, facts = lean
    spans = facts["spans"]
    assert isinstance(spans, dict)
    assert spans.get(SCOPE_SQLA, 0) > 10  # the ORM's queries are traced
    # sqlite3's instrumentation still traces a raw connection (the CREATE and the six SELECTs), but makes no
    # span under SQLAlchemy's (the processor leaves such nested spans out of every count)
    assert spans.get(SCOPE_SQLITE3, 0) == 7, spans
    assert spans.get(SCOPE_GUARD, 0) == 0, spans  # the test's roll-up needs no span of its own


def test_nothing_is_loaded_that_no_verdict_reads(lean: tuple[Run, dict[str, object]]) -> None:
    _, facts = lean
    modules = facts["modules"]
    assert isinstance(modules, list)
    assert "opentelemetry.sdk.metrics" not in modules  # no metrics in the guard: not even imported
    assert "otel_dbperf.metrics" not in modules
    assert "otel_dbperf._sqla.pools" not in modules  # pool waits and transactions: no verdict reads them
    assert "otel_dbperf._sqla.transactions" not in modules
    # the requirements of an instrumentation are checked when its library is imported, not at start-up
    checked = facts["checked"]
    assert isinstance(checked, list)
    assert "opentelemetry-instrumentation-flask" in checked
    assert "opentelemetry-instrumentation-redis" not in checked
    assert "opentelemetry-instrumentation-psycopg2" not in checked


def test_a_tests_records_are_freed_without_the_garbage_collector(lean: tuple[Run, dict[str, object]]) -> None:
    _, facts = lean
    # a request's queries and its roll-up are no reference cycle once the test is judged: freed as soon as
    # the next test starts, they never make the garbage collector run more often
    assert facts["cyclic"] == 0


def test_queries_outside_a_tests_call_are_not_analysed(lean: tuple[Run, dict[str, object]]) -> None:
    _, facts = lean
    analysed = facts["analysed"]
    assert isinstance(analysed, list)
    assert any("FROM authors" in s for s in analysed)  # the tests' own queries are
    # a fixture's set-up and tear-down are not counted: their statements need no fingerprint either
    assert not [s for s in analysed if "set-up only" in s or "tear-down only" in s]


def test_the_report_keeps_every_span(tmp_path: Path) -> None:
    report = tmp_path / "run.jsonl"
    result, facts = _run(tmp_path, "--dbperf-report", str(report))
    assert {name: expected_outcome(name) for name in result.outcomes} == result.outcomes, result.output
    spans = facts["spans"]
    assert isinstance(spans, dict)
    assert spans.get(SCOPE_GUARD, 0) == 5, spans  # one root span per test, as the report shows them
    assert spans.get(SCOPE_SQLITE3, 0) > 7, spans  # and the driver's spans under SQLAlchemy's
    names = {
        span["name"]
        for line in report.read_text().splitlines()
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    }
    assert "test_library.py::test_no_query_passes" in names
