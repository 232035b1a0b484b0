"""Application code calling a key-value store. Lines marked ``# line: NAME`` are asserted."""

from __future__ import annotations

from typing import Any


def cache_gets(client: Any, n: int) -> int:
    hits = 0
    for i in range(n):
        hits += client.get(f"beyondsql:k{i}") is not None  # line: cache_get
    return hits
