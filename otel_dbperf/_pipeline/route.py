"""What names a request or task: the "route" of the report and profiler, and the metric labels.

An HTTP request's root span carries ``http.route`` (the framework instrumentation's); a Celery
task's CONSUMER span carries ``celery.task_name`` (contrib's Celery instrumentation). Both are
bounded (the application's routes and task names), so both may label metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HTTP_ROUTE = "http.route"
CELERY_TASK_NAME = "celery.task_name"


def route_of(attrs: Mapping[str, Any]) -> str:
    """The route of a root span's attributes: ``http.route``, else ``celery.task_name``, else ""."""
    route = attrs.get(HTTP_ROUTE) or attrs.get(CELERY_TASK_NAME)
    return route if isinstance(route, str) else ""


def route_labels(attrs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(route, metric labels): ``{"http.route": ...}`` or ``{"celery.task_name": ...}`` or none."""
    route = attrs.get(HTTP_ROUTE)
    if isinstance(route, str) and route:
        return route, {HTTP_ROUTE: route}
    task = attrs.get(CELERY_TASK_NAME)
    if isinstance(task, str) and task:
        return task, {CELERY_TASK_NAME: task}
    return "", {}
