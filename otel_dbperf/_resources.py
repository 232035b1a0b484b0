"""Cheap CPU and memory samples (see design.md section 2 for their costs)."""

from __future__ import annotations

import os
import resource
import time

thread_time_ns = time.thread_time_ns

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _State:
    """This module's state."""

    def __init__(self) -> None:
        self.statm_fd = -1  # /proc/self/statm, opened on first use (and again in a forked child)


_state = _State()


def _reset_after_fork() -> None:
    if _state.statm_fd >= 0:
        try:
            os.close(_state.statm_fd)
        except OSError:
            pass
    _state.statm_fd = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def rss_bytes() -> int:
    """Current resident set size (Linux ``/proc/self/statm``; elsewhere the peak RSS)."""
    try:
        if _state.statm_fd < 0:
            _state.statm_fd = os.open("/proc/self/statm", os.O_RDONLY)
        data = os.pread(_state.statm_fd, 128, 0)
        return int(data.split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024
