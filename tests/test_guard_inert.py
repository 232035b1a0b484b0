"""Inert unless asked: with otel-dbperf installed, a project's pytest run that does not ask for the
guard imports no OpenTelemetry, instruments nothing, starts no thread and changes no environment
variable; the ``dbperf`` marker or fixture alone starts the guard at the first test that uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.guard_run import Run, clean_env, expected_outcome, run_suite, suite_line

#: otel-dbperf's modules that a run that does not ask for the guard imports: the plugin and what it needs
PLUGIN_MODULES = {"otel_dbperf", "otel_dbperf._version", "otel_dbperf.pytest_plugin", "otel_dbperf.settings"}


@pytest.fixture(scope="module")
def inert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, object], dict[str, str]]:
    tmp = tmp_path_factory.mktemp("guard-inert")
    env = clean_env(GUARD_INERT_OUT=str(tmp / "facts.json"))
    result = run_suite("inert", tmp, env=env)
    facts = json.loads((tmp / "facts.json").read_text())
    return result, facts, env


def test_a_run_that_does_not_ask_is_unchanged(inert: tuple[Run, dict[str, object], dict[str, str]]) -> None:
    result, facts, env = inert
    assert result.outcomes == {"test_an_n_plus_one_passes_when_not_asked": "passed"}, result.output
    assert facts["plugin_loaded"] is True  # the plugin was there (installed entry point), and did nothing:
    assert facts["dbperf_option"] is None
    assert facts["opentelemetry_modules"] == []
    assert set(facts["otel_dbperf_modules"]) <= PLUGIN_MODULES, facts["otel_dbperf_modules"]  # type: ignore[arg-type]
    assert facts["threads"] == ["MainThread"]
    assert facts["flask_class"] == "flask.app.Flask"
    assert facts["create_engine_type"] == "function"
    assert facts["sqlite3_connect"] == "<built-in function connect>"
    environ = {k: v for k, v in facts["environ"].items() if not k.startswith("PYTEST_")}  # type: ignore[attr-defined]
    assert environ == env
    assert "otel-dbperf:" not in result.output  # nothing said (pytest lists the plugin in its header)


def test_the_marker_and_the_fixture_alone_start_the_guard_at_their_first_use(tmp_path: Path) -> None:
    result = run_suite("lazy", tmp_path)
    assert len(result.outcomes) == 6, result.output
    assert {name: expected_outcome(name) for name in result.outcomes} == result.outcomes, result.output
    line = suite_line("lazy", "test_marked.py", "own")
    # the engine was made (and used) at import, before the guard started: traced all the same
    assert (
        f"the test itself: SELECT repeated 6 times\n    at test_marked.py:{line}\n"
        in result.messages["test_marked_n_plus_one_fails"]
    )
    assert f"2 x SELECT ?\n        at test_marked.py:{line} (2x)" in result.messages["test_fixture_max_queries_fails"]
    assert (
        "takes the keywords max_queries, allow_n_plus_one, max_duplicates only, not ['unknown']"
        in (result.messages["test_marker_with_an_unknown_keyword_fails"])
    )
