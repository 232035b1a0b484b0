"""A text progress bar for the command line."""

from __future__ import annotations

from typing import TextIO


def progress(done: int, total: int, stream: TextIO, label: str) -> None:
    """A bar redrawn in place on a terminal; elsewhere a line per quarter (logs stay readable)."""
    width = 30
    filled = width * done // max(total, 1)
    bar = f"{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    if stream.isatty():
        stream.write("\r" + bar + ("\n" if done >= total else ""))
    elif done == total or done * 4 // total != (done - 1) * 4 // total:
        stream.write(bar + "\n")
    stream.flush()
