"""Run by tests/test_guard_inert.py without --dbperf: the marker and the fixture alone start the guard,
at the first test that uses them; the expected outcome is in each name."""

from __future__ import annotations

import sys

import pytest
from sqlalchemy import create_engine, text

engine = create_engine("sqlite://")  # made at import, before the guard starts


def _lookups(count: int) -> None:
    with engine.connect() as conn:
        for i in range(count):
            conn.execute(text("SELECT :i"), {"i": i}).scalar()  # line: own


def test_unmarked_before_any_use_passes() -> None:
    _lookups(6)
    assert "opentelemetry.sdk" not in sys.modules  # nothing started yet


@pytest.mark.dbperf
def test_marked_n_plus_one_fails() -> None:
    _lookups(6)


def test_unmarked_after_the_first_use_passes() -> None:
    _lookups(6)  # not asked: not checked


@pytest.mark.dbperf(allow_n_plus_one=True, max_queries=6)
def test_marker_limits_met_passes() -> None:
    _lookups(6)


def test_fixture_max_queries_fails(dbperf) -> None:  # type: ignore[no-untyped-def]
    with dbperf.max_queries(1):
        _lookups(2)


@pytest.mark.dbperf(unknown=1)
def test_marker_with_an_unknown_keyword_fails() -> None:
    pass
