"""Workload statistics per statement fingerprint (filled in by the samples/statements work)."""

from __future__ import annotations

from typing import Any


def emit_statements(conn: Any, dialect: str, logger: Any) -> int:
    """filled in by the samples/statements work"""
    return 0
