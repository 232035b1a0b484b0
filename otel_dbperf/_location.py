"""Which frames are application code, and the first one that issued a query.

A frame walk with ``sys._getframe`` costs a few microseconds; the verdict per
file name is cached. Under async SQLAlchemy the query runs in a child
greenlet, so the walk continues into the parent greenlet's suspended frames.
"""

from __future__ import annotations

import linecache
import os
import sys
import sysconfig
from types import CodeType, FrameType
from typing import Any

_MAX_DEPTH = 256
_CACHE_MAX = 100_000
_THIS_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


#: (file path, line number, qualified function name) of an application frame
Location = tuple[str, int, str]
_QUALNAME = "co_qualname" if sys.version_info >= (3, 11) else "co_name"


def location_of(frame: FrameType) -> Location:
    code = frame.f_code
    return (code.co_filename, frame.f_lineno, getattr(code, _QUALNAME))


def _stdlib_dirs() -> tuple[str, ...]:
    dirs = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(os.path.abspath(path) + os.sep)
    return tuple(sorted(dirs))


class AppCode:
    """Classifies code objects as application code by path prefix."""

    def __init__(self, app_paths: tuple[str, ...]) -> None:
        self._prefixes = tuple(os.path.abspath(p).rstrip(os.sep) + os.sep for p in app_paths)
        self._excluded = (_THIS_PACKAGE, *_stdlib_dirs())
        # Keyed by file name: a str caches its hash, a code object does not (hashing one
        # walks its constants on every lookup).
        self._cache: dict[str, bool] = {}

    def is_app(self, code: CodeType) -> bool:
        filename = code.co_filename
        verdict = self._cache.get(filename)
        if verdict is None:
            verdict = self._classify(filename)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[filename] = verdict
        return verdict

    def _classify(self, filename: str) -> bool:
        """Under an application path, and not under a more specific library location."""
        if not filename or filename[0] == "<":
            return False
        path = os.path.abspath(filename)
        matched = max((p for p in self._prefixes if path.startswith(p)), key=len, default=None)
        if matched is None:
            return False
        if any(path.startswith(ex) and len(ex) > len(matched) for ex in self._excluded):
            return False
        rest = path[len(matched) :]  # e.g. a virtualenv inside the application's folder
        return "site-packages" not in rest and "dist-packages" not in rest

    def first_app_frame(self, frame: FrameType | None) -> FrameType | None:
        """The innermost application frame at or above ``frame`` (across greenlets)."""
        cached = self._cache.get
        glet = None
        for _ in range(_MAX_DEPTH):
            if frame is None:
                frame, glet = _parent_greenlet_frame(glet)
                if frame is None:
                    return None
            verdict = cached(frame.f_code.co_filename)
            if verdict:
                return frame
            if verdict is None and self.is_app(frame.f_code):
                return frame
            frame = frame.f_back
        return None

    def stacktrace(self, frame: FrameType | None, max_frames: int, source: bool = False) -> str:
        """Application frames only, most recent call last, at most ``max_frames``.

        File, line and function of each frame; the source line too only with ``source``
        (``DBPERF_STACKTRACE_SOURCE``): a literal written in the code would go out with it.
        """
        lines: list[str] = []
        depth = 0
        glet = None
        while depth < _MAX_DEPTH and len(lines) < max_frames:
            if frame is None:
                frame, glet = _parent_greenlet_frame(glet)
                if frame is None:
                    break
            code = frame.f_code
            if self.is_app(code):
                lineno = frame.f_lineno
                entry = f'  File "{code.co_filename}", line {lineno}, in {code.co_name}'
                text = linecache.getline(code.co_filename, lineno).strip() if source else ""
                lines.append(f"{entry}\n    {text}" if text else entry)
            frame = frame.f_back
            depth += 1
        if not lines:
            return ""
        lines.reverse()
        return "Traceback (application frames, most recent call last):\n" + "\n".join(lines)


def _parent_greenlet_frame(glet: Any) -> tuple[FrameType | None, Any]:
    """Hop from ``glet`` (None: the current greenlet) to its parent's suspended frame."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return None, None
    current = greenlet.getcurrent() if glet is None else glet
    parent = getattr(current, "parent", None)
    if parent is None:
        return None, None
    return getattr(parent, "gr_frame", None), parent
