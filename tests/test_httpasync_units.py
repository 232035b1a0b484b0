"""The application line of an outgoing HTTP call under asyncio, in process: httpx's AsyncClient
instrumented by contrib (over a mock transport: no server), otel-dbperf's processor on the provider.
The await-chain walk runs only for a call with no application frame on its task's stack (one whose
coroutine went straight to ``gather``), never for the common case of an awaited call."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from otel_dbperf._pipeline.location import AppCode
from otel_dbperf._pipeline.processor import DbPerfSpanProcessor
from otel_dbperf._pipeline.record import Request
from otel_dbperf.settings import Settings

HERE = Path(__file__)
IDS = (1, 2, 3)


def _line(marker: str) -> int:
    lines = HERE.read_text().splitlines()
    return next(i for i, text in enumerate(lines, start=1) if text.rstrip().endswith(f"# marker: {marker}"))


class Setup:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.processor = DbPerfSpanProcessor(Settings(app_paths=(str(HERE.parent),), resource_samples="off"))
        self.provider = TracerProvider()
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("test")
        self.awaited: list[Any] = []
        original = AppCode.awaited_from

        def counted(app: AppCode, frame: Any) -> Any:
            found = original(app, frame)
            self.awaited.append(found[0])
            return found

        monkeypatch.setattr(AppCode, "awaited_from", counted)

    def client(self) -> httpx.AsyncClient:
        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"path": request.url.path})

        client = httpx.AsyncClient(base_url="http://api.test", transport=httpx.MockTransport(answer))
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=self.provider)
        return client

    def request(self, work: Any) -> Request:
        """Run ``work(client)`` inside a request span on a fresh event loop; that request's record."""

        async def main() -> Request:
            async with self.client() as client:
                with self.tracer.start_as_current_span("GET /users", kind=SpanKind.SERVER):
                    request = self.processor.current_request()
                    assert request is not None
                    await work(client)
            return request

        return asyncio.run(main())


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    s = Setup(monkeypatch)
    yield s
    s.provider.shutdown()


def _locations(request: Request) -> list[Any]:
    assert request.http is not None
    assert [c[1] for c in request.http] == [f"http://api.test/users/{i}" for i in IDS]  # traced, in order
    return [c[4][:2] if c[4] else None for c in request.http]


def test_an_awaited_call_is_located_by_its_own_stack_without_the_await_chain(setup: Setup) -> None:
    async def loop(client: httpx.AsyncClient) -> None:
        for i in IDS:
            await client.get(f"/users/{i}")  # marker: loop

    request = setup.request(loop)
    assert _locations(request) == [(str(HERE), _line("loop"))] * len(IDS)
    assert setup.awaited == []  # an application frame on the stack: no await-chain walk


def test_a_gathered_call_is_located_at_the_awaiting_line(setup: Setup) -> None:
    async def gathered(client: httpx.AsyncClient) -> None:
        await asyncio.gather(*(client.get(f"/users/{i}") for i in IDS))  # marker: gather

    request = setup.request(gathered)
    assert _locations(request) == [(str(HERE), _line("gather"))] * len(IDS)
    assert len(setup.awaited) == len(IDS)  # one walk per call, each found the awaiting frame


def test_tasks_created_then_gathered_and_a_task_group(setup: Setup) -> None:
    # seed 004's pattern: tasks created first, gathered later; the line that awaits them
    async def created(client: httpx.AsyncClient) -> None:
        tasks = [asyncio.create_task(client.get(f"/users/{i}")) for i in IDS]
        await asyncio.gather(*tasks)  # marker: created

    assert _locations(setup.request(created)) == [(str(HERE), _line("created"))] * len(IDS)
    if sys.version_info < (3, 11):
        return

    async def group(client: httpx.AsyncClient) -> None:
        async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined]  # marker: taskgroup
            for i in IDS:
                tg.create_task(client.get(f"/users/{i}"))

    # where the group's parent task waits for its children: the end of `async with`
    assert _locations(setup.request(group)) == [(str(HERE), _line("taskgroup"))] * len(IDS)


def test_a_call_nothing_awaits_has_no_location(setup: Setup) -> None:
    async def unawaited(client: httpx.AsyncClient) -> None:
        # tasks the request does not await while they run: no line rather than a wrong one (the
        # frame that started the event loop lies below every task)
        tasks = [asyncio.ensure_future(client.get(f"/users/{i}")) for i in IDS]
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0)

    request = setup.request(unawaited)
    assert _locations(request) == [None] * len(IDS)
    assert setup.awaited == [None] * len(IDS)
