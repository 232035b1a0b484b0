"""The canary app: runs the leak-detection cases of tests/test_canaries.py, unchanged user code.

A Flask app served by uvicorn under opentelemetry-instrument. The cases (SQL text with unique
canaries, bound values, the driver to use) come from the JSON file named by ``CANARY_SPEC``;
the app runs them for real and answers with what happened (rows returned, errors raised), so
the test can check that every canary reached the database. Nothing here ever prints.

- ``GET /run/<group>``: every case of one group (one driver), errors caught; a case whose
  ``mode`` is ``log`` is followed by ``logger.exception(...)`` in the ``except``.
- ``GET /boom/<case>``: the case's error propagates: Flask logs "Exception on /boom/..." and answers 500.
- ``GET /stack``: a slow query issued from a source line that carries a literal canary, and a
  failing one (logged with ``logger.exception``) from another such line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from flask import Flask, jsonify
from sqlalchemy import Engine, create_engine, text

SPEC: dict[str, Any] = json.loads(open(os.environ["CANARY_SPEC"]).read())  # noqa: SIM115
CASES: dict[str, dict[str, Any]] = {c["id"]: c for cases in SPEC["groups"].values() for c in cases}
ENGINES: dict[str, Engine] = {}
SLEEP = "SELECT pg_sleep(0.55)"  # above the default stack-trace threshold (500 ms)
FAIL = "SELECT 1 / 0 WHERE :v <> ''"

app = Flask(__name__)
log = logging.getLogger("shop.orders")


def _engine(via: str) -> Engine:
    if via not in ENGINES:
        ENGINES[via] = create_engine(SPEC["urls"][via])
    return ENGINES[via]


def _error_text(exc: BaseException) -> str:
    """Everything the driver says about an error, to check the canary really is in it."""
    parts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e.args)]
        for name in ("detail", "pgerror", "hint", "context"):
            parts.append(str(getattr(e, name, "") or ""))
        diag = getattr(e, "diag", None)
        if diag is not None:
            parts += [str(diag.message_primary), str(diag.message_detail), str(diag.context)]
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return "\n".join(parts)


def _outcome(case: dict[str, Any], rows: Any = None, exc: BaseException | None = None) -> dict[str, Any]:
    if exc is not None:
        said = _error_text(exc)
        # asyncpg cuts a quoted value at 40 characters: its start is enough to count
        return {"error": type(exc).__name__, "carried": [c for c in case["canaries"] if c[:32] in said]}
    shown = repr(rows)
    return {"ran": True, "returned": [c for c in case["canaries"] if c in shown]}


def _sa(case: dict[str, Any]) -> dict[str, Any]:
    try:
        with _engine(case["via"]).connect() as conn:
            rows = conn.execute(text(case["sql"]), case["params"]).all()  # marker: sqlalchemy
    except Exception as exc:
        if case["mode"] == "log":
            log.exception("order lookup failed")
        return _outcome(case, exc=exc)
    return _outcome(case, rows)


def _dbapi(conn: Any, case: dict[str, Any]) -> dict[str, Any]:
    cur = conn.cursor()
    try:
        if case["params"]:
            cur.execute(case["sql"], case["params"])  # marker: dbapi
        else:
            cur.execute(case["sql"])  # marker: dbapi_plain
        rows = cur.fetchall() if cur.description else []
    except Exception as exc:  # noqa: BLE001
        return _outcome(case, exc=exc)
    finally:
        cur.close()
    return _outcome(case, rows)


async def _asyncpg_group(cases: list[dict[str, Any]]) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(SPEC["urls"]["asyncpg"])
    out: dict[str, Any] = {}
    try:
        for case in cases:
            try:
                if case.get("cursor"):
                    async with conn.transaction():
                        rows = [r async for r in conn.cursor(case["sql"], *case["params"])]  # marker: asyncpg_cursor
                else:
                    rows = await conn.fetch(case["sql"], *case["params"])  # marker: asyncpg
            except Exception as exc:  # noqa: BLE001
                out[case["id"]] = _outcome(case, exc=exc)
            else:
                out[case["id"]] = _outcome(case, rows)
    finally:
        await conn.close()
    return out


async def _sa_async_group(cases: list[dict[str, Any]]) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(SPEC["urls"]["sa_asyncpg"])
    out: dict[str, Any] = {}
    try:
        for case in cases:
            try:
                async with engine.connect() as conn:
                    rows = (await conn.execute(text(case["sql"]), case["params"])).all()  # marker: sa_async
            except Exception as exc:  # noqa: BLE001
                out[case["id"]] = _outcome(case, exc=exc)
            else:
                out[case["id"]] = _outcome(case, rows)
    finally:
        await engine.dispose()
    return out


def _connect(via: str) -> Any:
    if via == "psycopg":
        import psycopg

        return psycopg.connect(SPEC["urls"]["psycopg"], autocommit=True)
    if via == "psycopg2":
        import psycopg2

        conn = psycopg2.connect(SPEC["urls"]["psycopg2"])
        conn.autocommit = True
        return conn
    import sqlite3

    return sqlite3.connect(SPEC["urls"]["sqlite3"], isolation_level=None)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return "ok"


@app.get("/run/<group>")
def run_group(group: str):  # type: ignore[no-untyped-def]
    cases = SPEC["groups"][group]
    via = cases[0]["via"]
    if via == "asyncpg":
        return jsonify(asyncio.run(_asyncpg_group(cases)))
    if via == "sa_asyncpg":
        return jsonify(asyncio.run(_sa_async_group(cases)))
    if via.startswith("sa_"):
        return jsonify({case["id"]: _sa(case) for case in cases})
    conn = _connect(via)
    try:
        return jsonify({case["id"]: _dbapi(conn, case) for case in cases})
    finally:
        conn.close()


@app.get("/boom/<case_id>")
def boom(case_id: str):  # type: ignore[no-untyped-def]
    case = CASES[case_id]
    with _engine(case["via"]).begin() as conn:
        conn.execute(text(case["sql"]), case["params"])  # marker: boom
    return "unreachable"


def _all(result: Any, label: str) -> int:
    return len(result.all())


@app.get("/stack")
def stack():  # type: ignore[no-untyped-def]
    with _engine("sa_psycopg").connect() as conn:
        n = _all(conn.execute(text(SLEEP)), "CANARY_5e1f0c7a_source_line_9b2d4e86_YRANAC")  # marker: stack
    try:
        with _engine("sa_psycopg").connect() as conn:
            conn.execute(text(FAIL), {"v": "CANARY_3c8a61f2_source_line_raise_7d04e9b5_YRANAC"})
    except Exception:
        log.exception("stack report failed")
    return jsonify(rows=n)
