"""Loaded with ``-p cost_probe`` (before the guard starts): which installed instrumentations' library
requirements the guard checked. The suite's conftest writes what it saw at the session's end."""

from __future__ import annotations

CHECKED: list[str] = []

try:
    from opentelemetry.instrumentation import dependencies

    _check = dependencies.get_dist_dependency_conflicts

    def _counting(dist, *args, **kwargs):  # type: ignore[no-untyped-def]
        CHECKED.append(dist.metadata["Name"])
        return _check(dist, *args, **kwargs)

    dependencies.get_dist_dependency_conflicts = _counting
except ImportError:  # no OpenTelemetry instrumentation: nothing to count
    pass
