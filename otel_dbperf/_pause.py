"""The export side's pauses between slices of a batch (docs/design.md "Tail latency").

A request thread that comes back from the database (or from any call that lets go of the GIL)
while the export thread enriches or encodes a batch waits for the GIL until the export thread
lets go of it: up to the interpreter's switch interval (5 ms) later, and again after its next
query. So the enriching exporter and the OTLP encoder pause every ``PAUSE_EVERY`` spans of a
batch (a :class:`Pacer`): a real sleep (``sleep(0)`` lets go of the GIL, but the export thread
takes it back before the woken request thread can), twice as long as the slice before it took, so
a burst of export work is spread over about three times its length and a request that overlaps it
keeps about two thirds of the GIL instead of waiting for the whole burst.

The pauses never cost spans: when the GIL comes back late after a pause (``SATURATED_S`` beyond
the sleep: request threads hold it and the export thread would only fall behind, its queue
filling), the rest of the batch goes without pauses. Only the SDK's batch worker thread pauses: a
``force_flush`` exports on the thread that called it, which waits for it (a request handler
flushing at its end, a shutdown), so that export goes without pauses.
"""

from __future__ import annotations

import threading
from time import perf_counter as _clock
from time import sleep as _sleep

PAUSE_EVERY = 4  # spans handled between two pauses (a slice: ~30-60 us of work)
PAUSE_S: float | None = 0.00005  # the shortest pause (None: no pauses)
PAUSE_RATIO = 2.0  # a pause is this many times as long as the slice before it
MAX_PAUSE_S = 0.002  # the longest pause
SATURATED_S = 0.002  # the GIL came back this late after a pause: no more pauses in this batch
#: the name of the SDK's batch processor worker threads (opentelemetry-sdk 1.45.1: OtelBatch{Span}RecordProcessor)
WORKER_PREFIX = "OtelBatch"


def pacer(least: float | None) -> Pacer | None:
    """The pauses of a batch exported now on this thread; None: none (``least`` None, or this thread
    is not the SDK's batch worker)."""
    if least is None or not threading.current_thread().name.startswith(WORKER_PREFIX):
        return None
    return Pacer(least)


class Pacer:
    """The pauses of one batch: call :meth:`pause` between two slices."""

    __slots__ = ("_least", "_mark", "on")

    def __init__(self, least: float) -> None:
        self._least = least
        self._mark = _clock()
        self.on = True

    def pause(self) -> None:
        if not self.on:
            return
        now = _clock()
        asked = min(max((now - self._mark) * PAUSE_RATIO, self._least), MAX_PAUSE_S)  # as long as the slice
        _sleep(asked)
        self._mark = _clock()
        if self._mark - now - asked > SATURATED_S:
            self.on = False
