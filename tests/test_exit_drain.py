"""The derivation queue's drain at interpreter exit is bounded; what is left is dropped and counted."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from otel_dbperf import Settings
from otel_dbperf._pipeline import derive
from otel_dbperf._pipeline.record import Query, Thresholds, new_query
from otel_dbperf._pipeline.sink import Sink


def _query() -> Query:
    query = new_query(None, False)
    query.duration_ns, query.slow, query.statement, query.system = 1_000, False, "SELECT 1", "sqlite"
    return query


class SlowSink(Sink):
    def __init__(self) -> None:
        self.seen = 0

    def query(self, span: Any, query: Any) -> None:
        time.sleep(0.01)  # e.g. a huge statement
        self.seen += 1

    def request(self, span: Any, request: Any, rollup: Any, route: str) -> None:
        pass


def test_exit_drain_stops_at_its_bound_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(derive, "EXIT_DRAIN_S", 0.2)
    sink = SlowSink()
    deriver = derive.SpanDeriver(Thresholds.from_settings(Settings()), [sink])
    record = _query()
    n = 1000  # 10 s of work for the sink
    for _ in range(n):
        deriver.queue.append((object(), record))
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        deriver.drain_at_exit()
    assert 0 < sink.seen < n
    assert not deriver.queue and deriver.dropped == n - sink.seen
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"the metrics of {n - sink.seen} spans were dropped" in message


def test_exit_drain_without_backlog_drops_nothing(caplog: pytest.LogCaptureFixture) -> None:
    sink = SlowSink()
    deriver = derive.SpanDeriver(Thresholds.from_settings(Settings()), [sink])
    record = _query()
    for _ in range(3):
        deriver.queue.append((object(), record))
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        deriver.drain_at_exit()
    assert sink.seen == 3 and deriver.dropped == 0 and caplog.records == []
