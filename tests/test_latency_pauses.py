"""The export side lets go of the GIL between slices of a batch (issue 27, tail latency).

A request thread that comes back from the database while the export thread enriches or encodes a
batch waits for the GIL until the export thread lets go of it: up to the interpreter's switch
interval (5 ms) per wait. The enriching exporter and the OTLP encoder pause every ``PAUSE_EVERY``
spans of a batch (docs/design.md "Tail latency"). These tests count the pauses on a fake clock
(no timing); the bytes and the spans exported are the same with and without them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from support.pipeline import Pipeline

from otel_dbperf import _pause
from otel_dbperf.exporters._otlp import SpanEncoder

SPANS = 200
HANG_S = 60  # a hang guard, not a threshold


def on_worker_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a thread named as the SDK's batch processor worker (only it pauses)."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), name="OtelBatchSpanRecordProcessor")
    t.start()
    t.join(HANG_S)
    return out[0]


def batched(spans: int) -> Pipeline:
    """A pipeline whose batch processor's worker exports a batch once ``spans`` spans have ended."""
    return Pipeline(batch={"max_export_batch_size": spans, "schedule_delay_millis": 3_600_000})


def exported(p: Pipeline, n: int) -> list[ReadableSpan]:
    """The spans the worker thread exported, once there are ``n``."""
    deadline = time.monotonic() + HANG_S
    while len(p.memory.get_finished_spans()) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(p.memory.get_finished_spans())


def drive(p: Pipeline, queries: int) -> None:
    with p.request("/authors"):
        for i in range(queries):
            p.query(f"SELECT name FROM authors WHERE id = {i % 7}", system="postgresql")


class Sleeps:
    """``_pause``'s sleep and clock: each clock read advances ``step``; a sleep advances what it asked,
    plus ``late`` (the GIL coming back late)."""

    def __init__(self, step: float = 0.0001, late: float = 0.0) -> None:
        self.calls: list[float] = []
        self.now = 0.0
        self.step = step
        self.late = late

    def clock(self) -> float:
        self.now += self.step
        return self.now

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.now += seconds + self.late


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Sleeps:
    fake = Sleeps()
    monkeypatch.setattr(_pause, "_sleep", fake, raising=False)
    monkeypatch.setattr(_pause, "_clock", fake.clock, raising=False)
    return fake


def pauses(n: int) -> int:
    """One pause between two slices of PAUSE_EVERY spans: none before the first, none after the last."""
    return (n - 1) // _pause.PAUSE_EVERY


def as_long_as_the_slice(calls: list[float]) -> bool:
    assert _pause.PAUSE_S is not None
    return all(_pause.PAUSE_S <= s <= _pause.MAX_PAUSE_S for s in calls)


def test_the_pause_is_a_real_sleep() -> None:
    # sleep(0) lets go of the GIL, but the export thread takes it back before a woken request thread can
    assert _pause.PAUSE_S is not None
    assert _pause.PAUSE_S > 0
    assert 1 < _pause.PAUSE_EVERY < 512


def test_enrichment_pauses_between_slices_of_a_batch(sleeps: Sleeps) -> None:
    p = batched(SPANS)
    try:
        drive(p, SPANS - 1)
        spans = exported(p, SPANS)  # one batch of SPANS spans, exported on the worker thread
    finally:
        p.close()
    assert len(spans) == SPANS  # none lost
    assert len(sleeps.calls) == pauses(SPANS)
    assert as_long_as_the_slice(sleeps.calls)


def test_a_flush_on_the_calling_thread_does_not_pause(sleeps: Sleeps) -> None:
    # force_flush exports on the thread that called it, which waits for it
    p = batched(10 * SPANS)
    try:
        drive(p, SPANS - 1)
        spans = p.spans()
        batch = spans * 2
        SpanEncoder().encode(batch)
    finally:
        p.close()
    assert len(spans) == SPANS
    assert sleeps.calls == []


def test_encoder_pauses_between_slices_of_a_batch(sleeps: Sleeps) -> None:
    p = Pipeline()
    try:
        drive(p, 9)
        made: list[ReadableSpan] = p.spans()
    finally:
        p.close()
    batch = made * (SPANS // len(made))
    quiet = SpanEncoder()
    quiet.pause_s = None
    expected = quiet.encode(batch)
    assert sleeps.calls == []
    assert on_worker_thread(lambda: SpanEncoder().encode(batch)) == expected  # the same bytes
    assert len(sleeps.calls) == pauses(len(batch))
    assert as_long_as_the_slice(sleeps.calls)


def test_no_more_pauses_in_a_batch_once_the_gil_comes_back_late(sleeps: Sleeps) -> None:
    # request threads hold the GIL: pausing more would only slow the export thread down, its queue filling
    sleeps.late = 2 * _pause.SATURATED_S
    p = batched(SPANS)
    try:
        drive(p, SPANS - 1)
        spans = exported(p, SPANS)
    finally:
        p.close()
    assert len(spans) == SPANS
    assert len(sleeps.calls) == 1
    on_worker_thread(lambda: SpanEncoder().encode(spans * 2))
    assert len(sleeps.calls) == 2


def test_pauses_off(sleeps: Sleeps) -> None:
    p = Pipeline()
    try:
        drive(p, 9)
        batch: Any = p.spans() * 20
    finally:
        p.close()
    encoder = SpanEncoder()
    encoder.pause_s = None
    on_worker_thread(lambda: encoder.encode(batch))
    assert sleeps.calls == []
