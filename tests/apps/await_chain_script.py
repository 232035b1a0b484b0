"""The await-chain location (issue 24) on the Python that runs it, without OpenTelemetry or a database:
``python await_chain_script.py [--pure-python]`` prints one JSON line (Python version, failures) and
exits 1 on a failure. Every supported Python can run it (``python3.10 tests/apps/await_chain_script.py``);
``--pure-python`` hides the ``_asyncio`` accelerator, so asyncio's Python tasks and futures are used.

Each scenario starts ``tests/support/await_lib.fetch`` (a library coroutine: no application frame
on its task's stack) and compares the location ``AppCode`` answers with the line marked ``# L:<tag>``.
"""

from __future__ import annotations

import sys

if "--pure-python" in sys.argv:
    sys.modules["_asyncio"] = None  # type: ignore[assignment]

import asyncio  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent / "support"))
# location.py alone (stdlib only), so that any Python runs this without the package's dependencies
spec = importlib.util.spec_from_file_location("location", ROOT / "otel_dbperf" / "_pipeline" / "location.py")
location = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
spec.loader.exec_module(location)  # type: ignore[union-attr]
import await_lib  # noqa: E402

await_lib.APP = location.AppCode((str(HERE),))
await_lib.LOCATION = location
failures: dict[str, Any] = {}


def line(tag: str | None) -> int | None:
    if tag is None:
        return None
    for n, text in enumerate(Path(__file__).read_text().splitlines(), start=1):
        if text.rstrip().endswith("# L:" + tag):
            return n
    raise LookupError(tag)


def check(name: str, tag: str | None, under_run: bool = True) -> None:
    want = line(tag)
    got = {seen[0] for seen in await_lib.SEEN}
    if got != {want}:
        failures[name] = {"got": sorted(got, key=str), "want": want}
    for _, stack, main_task in await_lib.SEEN:
        if want is not None and f"line {want}," not in stack:
            failures[name + " stack"] = stack
        # below the loop that asyncio.run started: only for its own task (main()), never for another task
        if under_run and (f"line {line('main')}," in stack) != main_task:
            failures[name + " stack below the loop"] = stack
    await_lib.SEEN.clear()


async def helper() -> list[int]:
    return await asyncio.gather(await_lib.fetch(1), await_lib.fetch(2))  # L:helper


async def main() -> None:
    await asyncio.gather(await_lib.fetch(1), await_lib.fetch(2))  # L:gather
    check("gather", "gather")
    await helper()
    check("gather in a helper", "helper")
    await asyncio.gather(asyncio.gather(await_lib.fetch(1), await_lib.fetch(2)), await_lib.fetch(3))  # L:nested
    check("gather of a gather", "nested")
    task = asyncio.create_task(await_lib.fetch(1))
    await asyncio.sleep(0)
    await task  # L:later
    check("create_task, awaited later", "later")
    await asyncio.wait_for(await_lib.fetch(1), 5)  # L:wait_for
    check("wait_for", "wait_for")
    await asyncio.shield(await_lib.fetch(1))  # L:shield
    check("shield", "shield")
    await asyncio.wait([asyncio.create_task(await_lib.fetch(1))])  # L:wait
    check("wait", "wait")
    if sys.version_info >= (3, 11):
        async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]  # L:taskgroup
            group.create_task(await_lib.fetch(1))
            group.create_task(await_lib.fetch(2))
        check("TaskGroup", "taskgroup")
    await await_lib.fetch(1)  # L:direct
    check("awaited in place", "direct")
    task = asyncio.create_task(await_lib.fetch(1))
    done = asyncio.Event()
    task.add_done_callback(lambda _t: done.set())
    await done.wait()
    check("a task nothing awaits: no location", None)


asyncio.run(main())  # L:main

loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
loop.run_until_complete(asyncio.gather(await_lib.fetch(1)))  # L:own_gather
check("a loop of the application's own, a gather", "own_gather", under_run=False)
loop.run_until_complete(await_lib.fetch(1))  # L:own
check("a loop of the application's own", "own", under_run=False)
asyncio.set_event_loop(None)
loop.close()

python = sys.version.split()[0]
print(json.dumps({"python": python, "pure_python": asyncio.Task is asyncio.tasks._PyTask, "failures": failures}))
sys.exit(1 if failures else 0)
