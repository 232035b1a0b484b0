"""A stand-in database library for tests/apps/await_chain_script.py: outside the application's paths,
its coroutine "runs a query" and records what ``AppCode`` answers at that moment, as the processor
asks it at a span's end (the walk, then the await chain when the walk met the event loop)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

APP: Any = None  # the AppCode under test
LOCATION: Any = None  # its module
#: (line of the location found or None, the stack trace, whether the query's task is the one its loop runs
#: until it completes: then the stack goes on below the loop)
SEEN: list[tuple[int | None, str, bool]] = []


def _record() -> None:
    frame = sys._getframe(1)  # noqa: SLF001
    found, _lazy, hint, _cursor = APP.walk(frame)
    awaiter = None
    if found is None and hint.__class__.__name__ == "frame":
        found, awaiter = APP.awaited_from(hint)
    main = LOCATION._awaiter(asyncio.current_task(), asyncio) is LOCATION._RUNNER  # noqa: SLF001
    SEEN.append((found.f_lineno if found is not None else None, APP.stacktrace(frame, 10, False, awaiter), main))


async def fetch(i: int) -> int:
    await asyncio.sleep(0.01)  # suspended once, like a query waiting for its server
    _record()
    return i
