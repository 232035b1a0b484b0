"""fork() safety for otel-dbperf's own locks, queues and threads.

A forked child inherits every lock in the state it had in the parent; one held by
a parent thread at that moment (the export thread, the derivation thread) would
stay held forever in the child, where that thread does not exist. Each owner of a
lock, queue or thread registers a callback here; after a fork the child runs them
all, first thing, before the SDK's own after-fork hooks restart its export threads
(this module registers with ``os.register_at_fork`` when it is first imported,
before the SDK builds its processors). The callbacks give the child fresh locks,
forget the parent's per-request state, and let background threads start again
lazily, on first use.

Bound methods are held weakly: registering never keeps an object alive.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import _guard

_callbacks: list[Any] = []  # weakref.WeakMethod or a plain function
_lock = threading.Lock()


def register(callback: Callable[[], None]) -> None:
    """Run ``callback()`` in every forked child (a bound method is held weakly)."""
    ref: Any = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else callback
    with _lock:
        if len(_callbacks) > 64:  # drop the references whose objects are gone
            _callbacks[:] = [c for c in _callbacks if not isinstance(c, weakref.WeakMethod) or c() is not None]
        _callbacks.append(ref)


def after_in_child() -> None:
    """What the child runs (public for tests that simulate a fork)."""
    global _lock
    _lock = threading.Lock()
    _guard._lock = threading.Lock()  # noqa: SLF001 - internal_error must work in the callbacks below
    for ref in list(_callbacks):
        callback = ref() if isinstance(ref, weakref.WeakMethod) else ref
        if callback is None:
            continue
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 - a fork hook never breaks the child
            try:
                _guard.internal_error("after_fork", exc)
            except Exception:  # noqa: BLE001 - re-raised under pytest: visible, never propagated into fork()
                import traceback

                traceback.print_exc()
                _guard.errors += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_in_child)
