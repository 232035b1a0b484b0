"""Startup warnings that reach the terminal.

``opentelemetry-instrumentation-logging`` puts the SDK's ``LoggingHandler`` on the
root logger while instrumentors load; from then on a plain ``logging`` warning
goes only to the OTLP log pipeline, never to the terminal of the person starting
the app. Startup warnings matter most right there, so when no other handler
would show them they are written to stderr as well.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("otel_dbperf")


def _shown_on_a_console(logger: logging.Logger, level: int = logging.WARNING) -> bool:
    """Whether a record of ``level`` from ``logger`` reaches a console (not OpenTelemetry) handler."""
    if not logger.isEnabledFor(level):
        return False
    current: logging.Logger | None = logger
    seen_any = False
    while current is not None:
        for handler in current.handlers:
            seen_any = True
            if level >= handler.level and type(handler).__module__.split(".")[0] != "opentelemetry":
                return True
        if not current.propagate:
            break
        current = current.parent
    last_resort = logging.lastResort
    return not seen_any and last_resort is not None and level >= last_resort.level  # logging's last resort prints it


def startup_warning(message: str, *args: Any, exc_info: BaseException | None = None) -> None:
    """A WARNING record on the ``otel_dbperf`` logger, and its first line on stderr when no console shows it."""
    log.warning(message, *args, exc_info=exc_info)
    if not _shown_on_a_console(log):
        try:
            sys.stderr.write((message % args if args else message) + "\n")
        except (OSError, ValueError):
            pass
