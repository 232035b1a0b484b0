"""A FastAPI app over an asyncpg pool and async SQLAlchemy (asyncpg dialect), run as a script
(``opentelemetry-instrument python async_fanout_app.py PORT``: uvicorn.run under ``__main__``, so
the script's module frame is at the bottom of the event loop's stack).

Queries whose coroutines go straight to ``asyncio.gather``, a ``TaskGroup`` or ``create_task``
(no application frame on the stack while they run), a pool that resets each connection it takes
back, and cursors read row by row. No table: every statement reads generated values.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

FANOUT = 6  # one more than the default N+1 threshold
Q = "SELECT $1::int * 2 AS doubled"
SA_Q = text("SELECT CAST(:i AS integer) * 3 AS tripled")
ROWS = 200
SERIES = "SELECT g FROM generate_series(1, $1::int) AS g"
SLOW = "SELECT length(pg_sleep(0.05)::text) + $1::int"  # 50 ms: slow under the test's threshold

engine = create_async_engine(os.environ["APP_DB_URL"], pool_size=FANOUT, max_overflow=0)
pool: Any = None


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(os.environ["APP_PG_DSN"], min_size=1, max_size=FANOUT)
    yield
    await pool.close()
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/ping")
async def ping() -> str:
    return "ok"


@app.get("/gather")
async def gather() -> list[int]:
    return await asyncio.gather(*(pool.fetchval(Q, i) for i in range(FANOUT)))  # marker: gather


async def fetch_all(ids: range) -> list[int]:
    return await asyncio.gather(*(pool.fetchval(Q, i) for i in ids))  # marker: helper_gather


@app.get("/helper")
async def helper() -> list[int]:
    return await fetch_all(range(FANOUT))


@app.get("/nested_gather")
async def nested_gather() -> list[Any]:
    inner = asyncio.gather(pool.fetchval(Q, 1), pool.fetchval(Q, 2))
    return await asyncio.gather(inner, pool.fetchval(Q, 3))  # marker: nested_gather


@app.get("/taskgroup")
async def taskgroup() -> list[int]:
    if sys.version_info < (3, 11):
        return []
    async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined]  # marker: taskgroup
        tasks = [tg.create_task(pool.fetchval(Q, i)) for i in range(FANOUT)]
    return [t.result() for t in tasks]


@app.get("/later")
async def later() -> int:
    task = asyncio.create_task(pool.fetchval(SLOW, 7))
    await asyncio.sleep(0)
    return int(await task)  # marker: later


@app.get("/wait_for")
async def wait_for() -> int:
    return int(await asyncio.wait_for(pool.fetchval(Q, 1), 60))  # marker: wait_for


@app.get("/shield")
async def shield() -> int:
    return int(await asyncio.shield(pool.fetchval(Q, 2)))  # marker: shield


@app.get("/wait")
async def wait() -> int:
    done, _ = await asyncio.wait([asyncio.create_task(pool.fetchval(Q, 3))])  # marker: wait
    return int(done.pop().result())


@app.get("/own_loop")
def own_loop() -> int:
    """A sync route (a worker thread) that runs an event loop of its own until a library coroutine completes."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # gather() outside the loop takes the thread's
    try:
        conn = loop.run_until_complete(asyncpg.connect(os.environ["APP_PG_DSN"]))
        value = loop.run_until_complete(conn.fetchval(Q, 4))  # marker: own_loop
        slow = loop.run_until_complete(asyncio.gather(conn.fetchval(SLOW, 4)))  # marker: own_loop_gather
        loop.run_until_complete(conn.close())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return int(value) + slow[0]


@app.get("/unawaited")
async def unawaited() -> int:
    """The query ends while this request's task awaits something else: no application frame awaits it."""
    task = asyncio.create_task(pool.fetchval(Q, 5))
    done = asyncio.Event()
    task.add_done_callback(lambda _t: done.set())
    await done.wait()
    return int(task.result())


@app.get("/sessions")
async def sessions() -> list[Any]:
    async with contextlib.AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(AsyncSession(engine)) for _ in range(FANOUT)]
        return await asyncio.gather(*(s.scalar(SA_Q, {"i": i}) for i, s in enumerate(opened)))  # marker: sessions


@app.get("/pool_reset")
async def pool_reset() -> int:
    async with pool.acquire() as conn:
        total = 0
        for i in range(3):
            total += await conn.fetchval(Q, i)  # marker: pool_reset
    return total


@app.get("/cursor")
async def cursor() -> int:
    n = 0
    async with pool.acquire() as conn, conn.transaction():
        async for _row in conn.cursor(SERIES, ROWS):  # marker: cursor
            n += 1
    return n


@app.get("/cursor_fetch")
async def cursor_fetch() -> int:
    n = 0
    async with pool.acquire() as conn, conn.transaction():
        cur = await conn.cursor(SERIES, ROWS)
        while rows := await cur.fetch(50):  # marker: cursor_fetch
            n += len(rows)
    return n


@app.get("/cursors_n1")
async def cursors_n1() -> int:
    """One cursor per id: a real N+1 of cursors."""
    n = 0
    async with pool.acquire() as conn, conn.transaction():
        for i in range(FANOUT):
            async for _row in conn.cursor(SERIES, i + 1):  # marker: cursors_n1
                n += 1
    return n


@app.get("/stream")
async def stream() -> int:
    n = 0
    async with engine.connect() as conn:
        result = await conn.stream(text("SELECT g FROM generate_series(1, :n) AS g"), {"n": ROWS})  # marker: stream
        async for _row in result:
            n += 1
    return n


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
