"""Items of a request held until the request's root span arrives (it names the route).

Used on the derivation thread by the slow-query log and the profiler's history: a DB span
ends before its request's root span, so what needs the route waits here, bounded: at most
``max_requests`` requests wait (beyond, the oldest is released without a route), at most
``max_per_request`` items each (beyond, ``overflow`` decides), and, with ``max_age_s``, a
request whose root has not come that long after its first item is released without a route
(checked whenever an item arrives).
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PendingByRequest(Generic[T]):
    def __init__(
        self,
        release: Callable[[T, str], None],
        overflow: Callable[[T], None],
        max_requests: int = 10_000,
        max_per_request: int = 50,
        max_age_s: float | None = None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._release = release
        self._overflow = overflow
        self.max_requests = max_requests
        self.max_per_request = max_per_request
        self.max_age_s = max_age_s
        self._clock = clock
        self._pending: dict[int, list[T]] = {}  # id(request) -> its items, oldest request first
        self._since: dict[int, float] = {}  # id(request) -> when its first item came (with max_age_s)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, request: Any, item: T) -> None:
        """Hold ``item`` until :meth:`done` for ``request``; released at once without a request."""
        if request is None:
            self._release(item, "")
            return
        pending = self._pending
        if self.max_age_s is not None:
            now = self._clock()
            while self._since and now - next(iter(self._since.values())) >= self.max_age_s:
                self._release_oldest()
            self._since.setdefault(id(request), now)
        if len(pending) >= self.max_requests and id(request) not in pending:
            self._release_oldest()  # roots that never came: released without a route
        waiting = pending.setdefault(id(request), [])
        if len(waiting) < self.max_per_request:
            waiting.append(item)
        else:
            self._overflow(item)

    def _release_oldest(self) -> None:
        key = next(iter(self._pending))
        self._since.pop(key, None)
        for held in self._pending.pop(key):
            self._release(held, "")

    def done(self, request: Any, route: str) -> None:
        """The request's root arrived: release its items with its route."""
        self._since.pop(id(request), None)
        for item in self._pending.pop(id(request), ()):
            self._release(item, route)

    def clear(self) -> None:
        self._pending = {}
        self._since = {}
