"""What the derivation thread asks of a sink: all of it (the metrics, the slow-query log and the
profiler's history are sinks; each subclasses :class:`Sink` for the defaults)."""

from __future__ import annotations

from typing import Protocol

from opentelemetry.sdk.trace import ReadableSpan

from .record import Query, Request, Rollup


class Sink(Protocol):
    #: calls to key-value and document stores (``query.kind`` not KIND_QUERY) reach this sink too
    #: (the metrics); SQL queries reach every sink
    takes_calls: bool = False

    def query(self, span: ReadableSpan, query: Query) -> None:
        """A finished DB query (nested driver spans excluded); ``query.facts`` is its analysis."""

    def request(self, span: ReadableSpan, request: Request, rollup: Rollup, route: str) -> None:
        """A finished request root, with its roll-up and its route ("" when it has none)."""

    def after_fork_in_child(self) -> None:
        """In a forked child (its locks renewed): forget what the parent's requests left pending."""
        return None
