"""Which frames are application code, and the first one that issued a query.

A frame walk with ``sys._getframe`` costs a few microseconds; the verdict per
file name is cached. Under async SQLAlchemy the query runs in a child
greenlet, so the walk continues into the parent greenlet's suspended frames.

The same walk notices a SQLAlchemy lazy load on its way: the frame of
lazy loader's ``_load_for_state`` (``sqlalchemy/orm/strategies.py``), recognised by its
code object. Its file gets its own cached verdict, so every other frame costs
the walk nothing more.
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
_STRATEGIES = "sqlalchemy.orm.strategies"
_LAZY_FILE = 2  # the verdict of SQLAlchemy's strategies.py: not application code, home of the lazy loader


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
        # walks its constants on every lookup). True, False or _LAZY_FILE.
        self._cache: dict[str, bool | int] = {}
        self._lazy_code: CodeType | None = None  # the lazy loader's _load_for_state, once SQLAlchemy's ORM is loaded

    def is_app(self, code: CodeType) -> bool:
        return self._verdict(code.co_filename) is True

    def _verdict(self, filename: str) -> bool | int:
        verdict = self._cache.get(filename)
        if verdict is None:
            verdict = self._classify(filename)
            if verdict is False and self._is_lazy_file(filename):
                verdict = _LAZY_FILE
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[filename] = verdict
        return verdict

    def _is_lazy_file(self, filename: str) -> bool:
        """Whether ``filename`` is the loaded ``sqlalchemy.orm.strategies`` (once per file name)."""
        module = sys.modules.get(_STRATEGIES)
        if module is None or getattr(module, "__file__", None) != filename:
            return False
        self._lazy_code = _lazy_loader_code(module)
        return True

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
        return self.find(frame)[0]

    def find(self, frame: FrameType | None) -> tuple[FrameType | None, FrameType | None]:
        """(the innermost application frame at or above ``frame``, the SQLAlchemy lazy-loader
        frame passed on the way there or None), across greenlets."""
        cached = self._cache.get
        glet = None
        lazy = None
        for _ in range(_MAX_DEPTH):
            if frame is None:
                frame, glet = _parent_greenlet_frame(glet)
                if frame is None:
                    return None, lazy
            code = frame.f_code
            verdict = cached(code.co_filename)
            if verdict is not False:  # most frames are library frames: one test each
                if verdict is None:
                    verdict = self._verdict(code.co_filename)
                if verdict is True:
                    return frame, lazy
                if verdict == _LAZY_FILE and lazy is None:
                    if self._lazy_code is None:  # classified while the module was still loading
                        self._lazy_code = _lazy_loader_code(sys.modules.get(_STRATEGIES))
                    if code is self._lazy_code:
                        lazy = frame
            frame = frame.f_back
        return None, lazy

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


def _lazy_loader_code(module: Any) -> CodeType | None:
    """The code object of the lazy loader's ``_load_for_state`` (``LazyLoader`` in SQLAlchemy 1.4 and
    2.0, ``_LazyLoader`` in 2.1), or None."""
    loader = getattr(module, "_LazyLoader", None) or getattr(module, "LazyLoader", None)
    function = getattr(loader, "_load_for_state", None)
    code = getattr(getattr(function, "__wrapped__", function), "__code__", None)
    return code if isinstance(code, CodeType) else None


def lazy_loaded_relationship(frame: FrameType) -> Any:
    """The relationship (``RelationshipProperty``) that the lazy-loader ``frame`` is loading, or None.

    ``frame`` is one :meth:`AppCode.find` returned: its ``self`` is the lazy-loader
    strategy, whose ``parent_property`` is the relationship.
    """
    strategy = frame.f_locals.get("self")
    return getattr(strategy, "parent_property", None)


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
