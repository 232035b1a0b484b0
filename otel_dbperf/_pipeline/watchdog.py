"""The watchdog thread: stack samples of CPU-bound requests, and event-loop stalls.

The request thread only puts its :class:`~.record.Request` in :attr:`Watchdog.requests` at the
start and takes it out at the end (one dict store and one pop), and an asyncio loop's first
request schedules a heartbeat on it (one timer callback per interval on the loop). The
watchdog thread (held weakly: it ends with its processor) wakes every interval, a quarter of
the CPU threshold (of the stall threshold once a loop is watched, if shorter), and reads clocks;
it touches a thread's stack only past a threshold:

- a sync request it has seen open for at least ``DBPERF_CPU_BOUND_THRESHOLD_MS`` and whose thread
  has used that much CPU time so far (read through the thread's CPU clock,
  ``pthread_getcpuclockid``): its stack is sampled (``sys._current_frames``) once per look, and
  the innermost application frame kept;
- a loop whose heartbeat is ``DBPERF_EVENT_LOOP_BLOCKED_MS`` late: the loop thread's stack is
  sampled once, the application frame that holds it and the request of the running task kept
  as a :class:`~.findings.Stall`, and its length known when the heartbeat runs again.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
import weakref
from asyncio import tasks as _tasks
from typing import Any

from .. import _forksafe
from .._guard import internal_error
from .findings import Stall

MAX_SAMPLES = 64  # stack samples kept per request
MAX_STALLS = 16  # stalls kept per request
_QUALNAME = "co_qualname" if sys.version_info >= (3, 11) else "co_name"
#: asyncio's loop -> running task (a dict; asyncio.current_task(loop) reads it too); {}: not found here
_CURRENT_TASKS: dict[Any, Any] = getattr(_tasks, "_current_tasks", {})
_cpu_clock = getattr(time, "pthread_getcpuclockid", None)  # Linux and most Unixes; elsewhere no samples


class _Loop:
    """A watched event loop: its thread and heartbeat (monotonic ns of the last beat)."""

    __slots__ = ("loop", "thread", "beat", "stall", "handle")

    def __init__(self, loop: Any, thread: int) -> None:
        self.loop = loop
        self.thread = thread
        self.beat = time.monotonic_ns()
        self.stall: Stall | None = None  # the stall in progress
        self.handle: Any = None


class Watchdog:
    def __init__(self, thresholds: Any, app: Any, cpu: bool) -> None:
        """``app``: the :class:`~.location.AppCode` that tells application frames (None: no locations);
        ``cpu``: thread CPU times are sampled per request (``DBPERF_RESOURCE_SAMPLES`` not off)."""
        self._app = app
        self._cpu_ns = thresholds.cpu_bound_ns if cpu and _cpu_clock is not None else 0
        self._loop_ns = thresholds.loop_blocked_ns
        #: whether there is anything to watch (else the request thread skips it and no thread starts)
        self.active = bool(self._cpu_ns or self._loop_ns)
        #: how often it looks at the requests' CPU clocks (a quarter of the CPU threshold, 5 ms to 0.5 s),
        #: and the loops' heartbeat (a quarter of the stall threshold); it wakes at the shorter of the
        #: two only once a loop is watched
        self._cpu_interval = _quarter(self._cpu_ns)
        self.loop_interval = _quarter(self._loop_ns)
        self.interval = self._cpu_interval if self._cpu_ns else self.loop_interval
        self._interval_ns = int(self.loop_interval * 1e9)
        self._next_cpu = 0  # monotonic ns of the next look at the CPU clocks
        #: span id -> Request: the open requests (request thread: stored at the start, popped at the end)
        self.requests: dict[int, Any] = {}
        self._loops: dict[Any, _Loop] = {}
        self._needs_thread = True
        self._start_lock = _forksafe.lock("watchdog.start")
        self.record_stall: Any = None  # record_stall(seconds) for the metric, once attached
        _forksafe.register(self._after_fork_in_child)

    # ---- request thread -------------------------------------------------------------------
    def started(self, span_id: int, request: Any) -> None:
        """A request began (its thread and loop are on it)."""
        if self._needs_thread:
            self._start()
        self.requests[span_id] = request
        loop = request.loop
        if loop is not None and self._loop_ns and loop not in self._loops:
            self._watch_loop(loop, request.thread)

    def _watch_loop(self, loop: Any, thread: int) -> None:
        state = self._loops[loop] = _Loop(loop, thread)
        interval = self.loop_interval
        self.interval = min(self.interval, interval)
        empty = contextvars.Context()  # not the request's context: it would be kept alive by the timer

        def beat() -> None:
            state.beat = time.monotonic_ns()
            state.handle = loop.call_later(interval, beat, context=empty)

        state.handle = loop.call_later(interval, beat, context=empty)

    # ---- the watchdog thread ---------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._needs_thread:
                # the thread holds the watchdog weakly: it ends once its processor is gone
                thread = threading.Thread(target=_run, args=(weakref.ref(self),), name="otel-dbperf-watchdog")
                thread.daemon = True
                thread.start()
                self._needs_thread = False

    def _after_fork_in_child(self) -> None:
        self.requests.clear()
        self._loops.clear()
        self._needs_thread = True

    def tick(self) -> None:
        """One look at the open requests and the watched loops."""
        frames: dict[int, Any] | None = None
        now = time.monotonic_ns()
        if self._cpu_ns and now >= self._next_cpu:
            self._next_cpu = now + int(self._cpu_interval * 1e9)
            for request in tuple(self.requests.values()):
                if request.loop is not None or request.ended:
                    continue
                # its CPU clock is read only once it has been open as long as the threshold (it cannot
                # have used more CPU time than that before)
                seen = request.watched
                if not seen:
                    request.watched = now
                    continue
                if now - seen < self._cpu_ns:
                    continue
                if frames is None:
                    frames = sys._current_frames()  # noqa: SLF001 - also says which threads are alive
                frame = frames.get(request.thread)
                if frame is None:
                    continue
                try:
                    cpu = time.clock_gettime_ns(_cpu_clock(request.thread)) - request.cpu0  # type: ignore[misc]
                except OSError:
                    continue
                if cpu < self._cpu_ns:
                    continue
                samples = request.samples
                if samples is None:
                    samples = request.samples = []
                if len(samples) < MAX_SAMPLES:
                    samples.append(self._location(frame))
        if self._loops:
            self._check_loops(frames)

    def _location(self, frame: Any) -> tuple[Any, ...]:
        app = self._app
        found = app.find(frame)[0] if app is not None else None
        if found is None:
            return ("", 0, "")
        code = found.f_code
        return (code.co_filename, found.f_lineno, getattr(code, _QUALNAME))

    def _check_loops(self, frames: dict[int, Any] | None) -> None:
        now = time.monotonic_ns()
        for state in tuple(self._loops.values()):
            loop = state.loop
            stall = state.stall
            if stall is not None:
                if state.beat > stall.start:  # the heartbeat ran again: the stall is over
                    stall.end = state.beat
                    state.stall = None
                    record = self.record_stall
                    if record is not None:
                        record(stall.duration() / 1e9)
                continue
            if loop.is_closed():
                self._loops.pop(loop, None)
                continue
            due = state.beat + self._interval_ns
            if now - due < self._loop_ns or not loop.is_running():
                continue
            if frames is None:
                frames = sys._current_frames()  # noqa: SLF001
            frame = frames.get(state.thread)
            stall = state.stall = Stall(due, self._location(frame) if frame is not None else None)
            request = self._request_of(loop)
            if request is not None:
                stalls = request.stalls
                if stalls is None:
                    stalls = request.stalls = []
                if len(stalls) < MAX_STALLS:
                    stalls.append(stall)

    def _request_of(self, loop: Any) -> Any:
        """The open request of the task running on ``loop`` now; else the only open request on it."""
        task = _CURRENT_TASKS.get(loop)  # read from another thread, under the GIL
        on_loop = [r for r in tuple(self.requests.values()) if r.loop is loop and not r.ended]
        for request in on_loop:
            if task is not None and request.task is task:
                return request
        return on_loop[0] if len(on_loop) == 1 else None


def _quarter(threshold_ns: int) -> float:
    """A quarter of a threshold in seconds, 5 ms to 0.5 s (0.5 s for none)."""
    return min(0.5, max(0.005, threshold_ns / 4e9)) if threshold_ns else 0.5


def _run(ref: Any) -> None:
    while True:
        dog = ref()
        if dog is None:
            return
        interval = dog.interval
        del dog
        time.sleep(interval)
        dog = ref()
        if dog is None:
            return
        try:
            dog.tick()
        except Exception as exc:  # noqa: BLE001
            internal_error("watchdog", exc)
        del dog
