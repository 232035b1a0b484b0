"""A real Celery worker of tests/apps/celery_tasks.py, its client and its queue.

The queue is this test session's own (``beyondsql-<pid>``): a second suite running beside this one on
the same Redis never takes its tasks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import APPS, BIN, TESTS, stop_group

APP_FILE = str(APPS / "celery_tasks.py")
QUEUE = f"beyondsql-{os.getpid()}"


@contextmanager
def worker(env: dict[str, str], pool: str, bin_dir: Path = BIN, instrument: bool = True) -> Iterator[dict[str, Any]]:
    """A Celery worker of ``celery_tasks`` (from ``bin_dir``) under opentelemetry-instrument (or
    without it: ``instrument=False``); SIGTERM at the end, its output then in ``info["output"]``."""
    env = {**env, "APP_CELERY_QUEUE": QUEUE}
    cmd = [
        *([str(bin_dir / "opentelemetry-instrument")] if instrument else []),
        str(bin_dir / "celery"),
        "-A",
        "celery_tasks",
        "worker",
        "-P",
        pool,
        "-c",
        "1",
        "-Q",
        QUEUE,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "warning",
    ]
    log = open(TESTS / f".celery-{os.getpid()}-{pool}.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=APPS, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info: dict[str, Any] = {"proc": proc, "log": log}
    try:
        yield info
    finally:
        stop_group(proc, log, info, 30)  # SIGTERM is a warm shutdown: the worker flushes its spans


def client(redis_db: int) -> Any:
    from celery import Celery

    url = f"redis://127.0.0.1:6379/{redis_db}"
    client = Celery("beyondsql_client", broker=url, backend=url)
    client.conf.task_default_queue = QUEUE
    return client


def purge(redis_db: int) -> None:
    import redis

    r = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    r.delete(QUEUE)  # tasks left over by an earlier, interrupted run
    # as a fresh Redis: Celery's first EVALSHA gets NOSCRIPT (redis-py loads the script and retries),
    # so the verdicts cannot depend on what this server has seen before
    r.script_flush()
