"""Cheap CPU and memory samples (see design.md section 2 for their costs)."""

from __future__ import annotations

import os
import resource
import time

thread_time_ns = time.thread_time_ns

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_statm_fd = -1


def _reset_after_fork() -> None:
    global _statm_fd
    if _statm_fd >= 0:
        try:
            os.close(_statm_fd)
        except OSError:
            pass
    _statm_fd = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def rss_bytes() -> int:
    """Current resident set size (Linux ``/proc/self/statm``; elsewhere the peak RSS)."""
    global _statm_fd
    try:
        if _statm_fd < 0:
            _statm_fd = os.open("/proc/self/statm", os.O_RDONLY)
        data = os.pread(_statm_fd, 128, 0)
        return int(data.split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024
