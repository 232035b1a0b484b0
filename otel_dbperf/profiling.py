"""Manual profiling for code without a server span: background jobs, scripts, Celery tasks.

``profile_session`` (a context manager, ``with`` or ``async with``) and ``profile_query``
(a decorator for sync and async functions) open a span; when it is the first span of its
trace it is a local root, so otel-dbperf gives it what it gives a request span: the DB
roll-up (query count, slow count, DB time), the N+1 verdict, CPU time and RSS samples,
and its metrics (``dbperf.request.db.*`` without a route). Inside a request they are
ordinary child spans and the request keeps the roll-up.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from opentelemetry import trace

F = TypeVar("F", bound=Callable[..., Any])
_TRACER_NAME = "otel_dbperf.profiling"


class profile_session:  # noqa: N801 - used like a function, as in the seeds
    """``with profile_session("nightly_import"):`` or ``async with profile_session(session, "bulk_insert"):``.

    The seeds' form passes the SQLAlchemy session first; it is accepted and not needed
    (every query of the block is traced whatever session issues it).
    """

    def __init__(self, name_or_session: Any, name: str | None = None, attributes: dict[str, Any] | None = None) -> None:
        if name is None:
            if not isinstance(name_or_session, str):
                raise TypeError("profile_session(name) or profile_session(session, name)")
            name = name_or_session
        self.name = name
        self.attributes = attributes
        self._scope: Any = None

    def __enter__(self) -> trace.Span:
        tracer = trace.get_tracer(_TRACER_NAME)
        self._scope = tracer.start_as_current_span(self.name, attributes=self.attributes)
        span: trace.Span = self._scope.__enter__()
        return span

    def __exit__(self, *exc_info: Any) -> Any:
        return self._scope.__exit__(*exc_info)

    async def __aenter__(self) -> trace.Span:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> Any:
        return self.__exit__(*exc_info)


def profile_query(fn: F) -> F:
    """Decorator: each call runs inside ``profile_session("<module>.<qualname>")`` (a script's: ``<qualname>``)."""
    name = fn.__qualname__ if fn.__module__ == "__main__" else f"{fn.__module__}.{fn.__qualname__}"
    attributes = {"code.function.name": fn.__qualname__}
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            async with profile_session(name, attributes=attributes):
                return await fn(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with profile_session(name, attributes=attributes):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
