"""fork() safety for otel-dbperf's own locks, queues and threads.

A forked child inherits every lock in the state it had in the parent; one held by
a parent thread at that moment (the export thread, the derivation thread) would
stay held forever in the child, where that thread does not exist.

Locks: every lock of otel-dbperf is made here, by :func:`lock`, :func:`rlock` or
:func:`bounded_semaphore`, which register it under a name where it is made; after
a fork the child renews every registered one in place, first thing (the same object,
unlocked: whoever holds a reference keeps a working lock, and an acquire costs what
a plain ``threading.Lock`` costs, with no indirection). ``tests/test_fork.py`` holds
all of them (from :func:`registered`) while it forks, and a test fails if any module
of the package makes a lock any other way.

Everything else (queues, per-request state, background threads): each owner registers
a callback with :func:`register`; the child runs them all after renewing the locks,
before the SDK's own after-fork hooks restart its export threads (this module
registers with ``os.register_at_fork`` when it is first imported, before the SDK builds
its processors). The callbacks forget the parent's per-request state and let
background threads start again lazily, on first use.

Bound methods and locks are held weakly: registering never keeps an object alive.
"""

from __future__ import annotations

import os
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any

_callbacks: list[Any] = []  # weakref.WeakMethod or a plain function
_locks: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()  # lock -> its name
_semaphores: weakref.WeakKeyDictionary[Any, tuple[str, int]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()  # the registry's own: renewed first in the child, like the others


def _print_error(where: str, exc: BaseException) -> None:
    traceback.print_exception(exc)


class _State:
    """This module's state (what is rebound; the registries above are only mutated)."""

    def __init__(self) -> None:
        #: how a failed callback is reported: ``_guard`` (which makes its own lock here) sets its own
        self.report_error: Callable[[str, BaseException], None] = _print_error


_state = _State()


def report_errors_with(report: Callable[[str, BaseException], None]) -> None:
    """How a callback that fails in the child is reported (``_guard.internal_error``'s guarded form)."""
    _state.report_error = report


def lock(name: str) -> threading.Lock:
    """A new ``threading.Lock``, renewed (unlocked, in place) in every forked child."""
    made = threading.Lock()
    with _lock:
        _locks[made] = name
    return made


def rlock(name: str) -> threading.RLock:
    """A new ``threading.RLock``, renewed (unowned, in place) in every forked child."""
    made = threading.RLock()
    with _lock:
        _locks[made] = name
    return made


def bounded_semaphore(name: str, value: int) -> threading.BoundedSemaphore:
    """A new ``threading.BoundedSemaphore``, back to ``value`` free slots in every forked child."""
    made = threading.BoundedSemaphore(value)
    with _lock:
        _semaphores[made] = (name, value)
    return made


def registered() -> list[tuple[str, Any]]:
    """(name, lock) of every live lock and semaphore made by this module."""
    with _lock:
        return [*((name, made) for made, name in _locks.items()), *((n, s) for s, (n, _) in _semaphores.items())]


def register(callback: Callable[[], None]) -> None:
    """Run ``callback()`` in every forked child (a bound method is held weakly)."""
    ref: Any = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else callback
    with _lock:
        if len(_callbacks) > 64:  # drop the references whose objects are gone
            _callbacks[:] = [c for c in _callbacks if not isinstance(c, weakref.WeakMethod) or c() is not None]
        _callbacks.append(ref)


def _renew_locks() -> None:
    """Every registered lock unlocked and every semaphore full again, in place (the child has one thread)."""
    _lock._at_fork_reinit()  # type: ignore[attr-defined]  # noqa: SLF001 - CPython >= 3.9, as threading itself uses
    for made in list(_locks.keys()):
        made._at_fork_reinit()  # noqa: SLF001
    for semaphore, (_, value) in list(_semaphores.items()):
        semaphore._cond._at_fork_reinit()  # noqa: SLF001
        semaphore._value = value  # noqa: SLF001


def after_in_child() -> None:
    """What the child runs (only ever in a freshly forked child: it unlocks every registered lock)."""
    _renew_locks()  # the error report (_guard's lock) must work in the callbacks below
    for ref in list(_callbacks):
        callback = ref() if isinstance(ref, weakref.WeakMethod) else ref
        if callback is None:
            continue
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 - a fork hook never breaks the child
            _state.report_error("after_fork", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_in_child)
