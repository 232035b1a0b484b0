"""A background job without a server span, using the manual profiling API (sync and async)."""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy import create_engine, text

from otel_dbperf.profiling import profile_query, profile_session

engine = create_engine(f"sqlite:///{sys.argv[1]}")


@profile_query
def nightly_import(n: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, owner TEXT)"))
        for i in range(n):
            conn.execute(text(f"SELECT owner FROM jobs WHERE id = {i}")).all()  # marker: job_loop


@profile_query
async def async_job() -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).all()


async def main() -> None:
    async with profile_session(None, "bulk_session"):
        with engine.connect() as conn:
            conn.execute(text("SELECT 2")).all()
            conn.execute(text("SELECT 3")).all()
    await async_job()


nightly_import(7)
asyncio.run(main())
