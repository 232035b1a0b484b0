"""What an EXPLAIN makes and is bound by: its configuration, the plan, the span event's names."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ... import attributes as A

_log = logging.getLogger("otel_dbperf")
EVENT_EXPLAIN = A.EVENT_EXPLAIN
ATTR_PLAN = A.EXPLAIN_PLAN
ATTR_FORMAT = A.EXPLAIN_FORMAT
ATTR_VERDICT = A.EXPLAIN_VERDICT
ATTR_DATABASE = A.EXPLAIN_DATABASE
ATTR_ESTIMATED_ROWS = A.EXPLAIN_ESTIMATED_ROWS
ATTR_INDEX_HINT = A.EXPLAIN_INDEX_HINT
ATTR_DURATION_MS = A.EXPLAIN_DURATION_MS
LARGE_TABLE_ROWS = 10_000  # a full scan (or sort) of fewer estimated rows is not worth a verdict
LARGE_RESULT_ROWS = 10_000  # a result of this many estimated rows sent to the application is worth one
SELECTIVE_SHARE = 0.1  # PostgreSQL: an index is suggested when the filter keeps at most this share of rows
_MAX_NODES = 5_000  # plan nodes looked at for a verdict
_MAX_DEPTH = 100  # plan nesting kept in the plan text
_MAX_FINGERPRINTS = 10_000  # per-fingerprint rate-limit entries kept
_MAX_HINT_COLUMNS = 3


@dataclass(frozen=True)
class ExplainConfig:
    analyze: bool = False  # EXPLAIN ANALYZE executes the query (read-only, rolled back)
    timeout_ms: int = 200  # statement timeout of the EXPLAIN itself
    per_fingerprint_interval_s: float = 60.0  # at most one plan per fingerprint per interval
    max_per_minute: int = 30  # plans per minute, all fingerprints together
    max_plan_chars: int = 16384  # plan text is cut (and marked) beyond this


@dataclass(frozen=True)
class Plan:
    database: str  # "postgresql" | "mysql" | "sqlite"
    format: str  # "json" | "text"
    text: str  # sanitized plan
    verdict: str  # what to do about it, "" when nothing stands out
    estimated_rows: int | None  # rows the flagged scan reads (planner estimate); else the plan's estimate
    index_hint: str  # e.g. "products(name)", or ""


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
