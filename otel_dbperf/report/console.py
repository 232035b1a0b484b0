"""What the ``otel-dbperf`` commands share on the console: exit codes, progress bars, time arguments."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TextIO

#: 0 report written; 2 bad usage or an unreadable file; 3 no span could be read (with a baseline: or no
#: DB spans in one side's window); 4 with ``--fail-on-regression``: something regressed (``compare``)
EXIT_OK, EXIT_USAGE, EXIT_NO_DATA, EXIT_REGRESSION = 0, 2, 3, 4


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


class FileProgress:
    """A progress bar on stderr while reading a file, when stderr is a terminal."""

    def __init__(self, name: str, size: int, stream: TextIO) -> None:
        self.name, self.size, self.stream = name, size, stream
        self.read = 0
        self.shown = -1
        self.on = size > 0 and stream.isatty()

    def advance(self, chars: int) -> None:
        self.read += chars
        if self.on:
            percent = min(99, 100 * self.read // self.size)
            if percent != self.shown:
                self.shown = percent
                progress(percent, 100, self.stream, f"reading {self.name} (%)")

    def done(self) -> None:
        if self.on:
            progress(100, 100, self.stream, f"reading {self.name} (%)")


def time_ns(text: str) -> int:
    """An ISO 8601 time argument, in nanoseconds since the epoch."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return int(moment.timestamp() * 1e9)
