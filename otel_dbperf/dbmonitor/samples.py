"""Query samples of the server's sessions (filled in by the samples/statements work)."""

from __future__ import annotations

from typing import Any


def emit_samples(conn: Any, dialect: str, logger: Any) -> int:
    """filled in by the samples/statements work"""
    return 0
