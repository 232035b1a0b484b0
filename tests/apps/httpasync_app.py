"""A FastAPI app (seed 004) whose requests call a JSON API (``APP_API_URL``) once per user: an HTTP N+1,
made with httpx's AsyncClient in a loop and through ``asyncio.gather``, with httpx's sync Client,
and with aiohttp's ClientSession in a loop and through ``asyncio.gather``. In the gathered cases the
calls' coroutines go straight to ``gather``: no application frame is on their task's stack.
Lines marked ``# marker: NAME`` are looked up by the tests.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI

API = os.environ.get("APP_API_URL", "http://127.0.0.1:9")
IDS = (11, 12, 13, 14, 15, 16)  # one more than the default HTTP N+1 threshold
app = FastAPI()


@app.get("/ping")
async def ping() -> str:
    return "ok"


@app.get("/httpx_loop")
async def httpx_loop() -> list[Any]:
    found = []
    async with httpx.AsyncClient(base_url=API) as client:
        for user_id in IDS:
            found.append((await client.get(f"/users/{user_id}")).json())  # marker: httpx_loop
    return found


@app.get("/httpx_gather")
async def httpx_gather() -> list[Any]:
    async with httpx.AsyncClient(base_url=API) as client:
        responses = await asyncio.gather(*(client.get(f"/users/{i}") for i in IDS))  # marker: httpx_gather
    return [r.json() for r in responses]


@app.get("/httpx_sync")
def httpx_sync() -> list[Any]:  # FastAPI runs it in its thread pool
    with httpx.Client(base_url=API) as client:
        return [client.get(f"/users/{i}").json() for i in IDS]  # marker: httpx_sync


@app.get("/aiohttp_loop")
async def aiohttp_loop() -> list[Any]:
    found = []
    async with aiohttp.ClientSession() as session:
        for user_id in IDS:
            async with session.get(f"{API}/users/{user_id}") as resp:  # marker: aiohttp_loop
                found.append(await resp.json())
    return found


@app.get("/aiohttp_gather")
async def aiohttp_gather() -> list[Any]:
    async with aiohttp.ClientSession() as session:
        responses = await asyncio.gather(*(session.get(f"{API}/users/{i}") for i in IDS))  # marker: aiohttp_gather
        return [await r.json() for r in responses]


@app.get("/few")
async def few() -> list[Any]:
    """Two calls of one route: under the threshold, no finding."""
    async with httpx.AsyncClient(base_url=API) as client:
        return [(await client.get(f"/users/{i}")).json() for i in IDS[:2]]
