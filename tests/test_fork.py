"""fork() while otel-dbperf's threads hold their locks: every child traces, flushes and exits."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import support.pipeline
from conftest import APPS, BIN, base_env
from fork_app import wait_all
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

import otel_dbperf
from otel_dbperf import Settings, _forksafe, _guard, _prefork
from otel_dbperf import attributes as A
from otel_dbperf._sqla import explain as _explain
from otel_dbperf.exporters.otlp_json_file import OTLPJsonFileSpanExporter
from otel_dbperf.profiler import HistorySink, QueryHistory

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILDREN = 20
BIG_VALUES = ", ".join(["('secret')"] * 400)  # a statement over _sql's 4 KiB cache-by-value limit
CHILD_DEADLINE_S = 60.0  # a hang detector, not a timing assertion: a healthy child takes well under 1 s


class SlowExporter(SpanExporter):
    """Keeps the export thread busy; no lock of its own (a child must not hang on the test's code)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        time.sleep(0.002)
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


class Pipeline(support.pipeline.Pipeline):
    """What the configurator builds, with every lock-owning part of otel-dbperf in it."""

    def __init__(self, tmp_path: Path) -> None:
        # this file is the application: its Redis call is one of the request (the store classifier's lock)
        settings = Settings(app_paths=(str(Path(__file__).parent),), slow_query_threshold_ms=0, explain=True)
        self.slow = SlowExporter()
        self.file = OTLPJsonFileSpanExporter(str(tmp_path / "spans.jsonl"))
        self.history = QueryHistory(100)
        super().__init__(
            settings,
            exporters=[self.slow, self.file],  # several exporters: take() uses the export lock
            batch={"max_export_batch_size": 16},
            metrics=(),
            sinks=[HistorySink(self.history)],
        )
        assert self.deriver is not None
        self.hooks = _prefork.ForkHooks(self.meters, self.deriver)
        self.explainer = _explain.Explainer()

    def request(self, name: str, queries: int, stores: bool = False) -> None:
        """``stores``: also a big statement (analysed under the sanitizer's big-statement lock on the
        export and derivation threads) and a Redis call (the store classifier's lock, request thread)."""
        with self.tracer.start_as_current_span(name, kind=SpanKind.SERVER):
            for i in range(queries):
                with self.tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as db:
                    db.set_attribute("db.system.name", "postgresql")
                    db.set_attribute("db.query.text", f"SELECT * FROM t WHERE id = {i} AND s = 'secret'")
            if stores:
                with self.tracer.start_as_current_span("INSERT", kind=SpanKind.CLIENT) as db:
                    db.set_attribute("db.system.name", "postgresql")
                    db.set_attribute("db.query.text", f"INSERT INTO t (s) VALUES {BIG_VALUES} -- {name}")
                with self.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as kv:
                    kv.set_attribute("db.system.name", "redis")
                    kv.set_attribute("db.query.text", "GET secret")


# the registered names of the locks the pipeline above takes (the two taken at run time included:
# the sanitizer's big-statement lock, export and derivation threads; the store classifier's, request thread)
PIPELINE_LOCKS = {
    "processor.shared", "processor.overflow", "derive.drain", "derive.start", "record.analysis",
    "profiler.history", "explain.counts", "explain.rate_limit", "explain.install", "guard", "otlp_json_file",
    "sql.big_statements", "nosql.calls",
}  # fmt: skip


def _held_at_fork() -> list[tuple[str, Any]]:
    """Every lock of otel-dbperf, from the registry where each is made (and the registry's own)."""
    return [("forksafe.registry", _forksafe._lock), *_forksafe.registered()]


def _take_all(locks: list[Any], deadline: float) -> list[Any]:
    """All of ``locks``, taken by this thread, or [] at the deadline: never waits on one while holding
    others (the background threads take some of them nested, in an order of their own)."""
    while time.monotonic() < deadline:
        taken = []
        for lock in locks:
            if not lock.acquire(blocking=False):
                break
            taken.append(lock)
        else:
            return taken
        for lock in reversed(taken):
            lock.release()
        time.sleep(0.001)
    return []


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path)
    yield p
    p.close()


def _child(p: Pipeline, index: int, out: int) -> None:
    """Runs in the forked child: what a worker does, then what interpreter exit does."""
    _guard.RERAISE = False
    inherited = len(p.processor._open) + len(p.processor._done) + len(p.deriver.queue)
    p.request(f"GET /child/{index}", 6, stores=True)
    flushed = p.provider.force_flush(30_000)
    p.deriver.drain_at_exit()
    p.history.add(0.1, "SELECT 1")
    p.explainer.count("explained")
    _guard.internal_error("fork-test", RuntimeError("reported, not raised"))
    mine = [s for s in p.slow.spans if s.name == f"GET /child/{index}"]
    enriched = [s for s in p.slow.spans if s.attributes and A.QUERY_FINGERPRINT in s.attributes]
    leaked = any("secret" in s.to_json() for s in p.slow.spans)
    p.provider.shutdown()
    report = {
        "flushed": flushed,
        "root": len(mine),
        "count": mine[0].attributes[A.DB_QUERY_COUNT] if mine else None,
        "store_calls": mine[0].attributes.get(A.NOSQL_CALL_COUNT) if mine else None,
        "big": [s.attributes.get(A.DB_QUERY_TEXT, "")[:8] for s in p.slow.spans if s.name.startswith("INSERT")],
        "enriched": len(enriched),
        "leaked": leaked,
        "history": p.history.totals()["total_queries"],
        "inherited": inherited,
    }
    os.write(out, (json.dumps(report) + "\n").encode())  # short: the pipe is read once every child is done


def test_children_forked_while_every_lock_is_held_still_trace_and_exit(pipeline: Pipeline) -> None:
    stop = threading.Event()

    def busy() -> None:  # heavy export: the export threads and the deriver are always at work
        while not stop.is_set():
            pipeline.request("GET /parent", 20)

    workers = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    # The spans keep their exporters and the deriver busy while the locks are taken below; the
    # producers stop first: a drain empties the queue before it lets go of its lock, so a producer
    # faster than the deriver would keep the holder waiting (tests/apps/fork_app.py forks while
    # producers run, without holding locks).
    stop.set()
    for w in workers:
        w.join(10)
    # The deterministic part: a parent thread holds every lock of ours while the children fork.
    held, release = threading.Event(), threading.Event()

    locks = _held_at_fork()
    names = {name for name, _ in locks}
    assert names >= PIPELINE_LOCKS, PIPELINE_LOCKS - names

    def holder() -> None:
        taken = _take_all([lock for _, lock in locks], deadline=time.monotonic() + 30)
        try:
            if taken:
                held.set()
                release.wait()
        finally:
            for lock in reversed(taken):
                lock.release()

    holding = threading.Thread(target=holder, daemon=True)
    holding.start()
    read_end, write_end = os.pipe()
    pids = []
    try:
        assert held.wait(30), "the holder could not take every lock (one is held for good under load)"
        for i in range(CHILDREN):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    os.close(read_end)
                    _child(pipeline, i, write_end)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
    finally:
        release.set()
        stop.set()
        os.close(write_end)
    codes, hung = wait_all(pids, CHILD_DEADLINE_S)
    with os.fdopen(read_end) as reports_file:
        reports = [json.loads(line) for line in reports_file]
    for w in [*workers, holding]:
        w.join(10)
    assert hung == 0, f"{hung} of {CHILDREN} children hung"
    assert codes == [0] * CHILDREN
    assert len(reports) == CHILDREN
    for report in reports:
        assert report["flushed"] is True and report["root"] == 1 and report["count"] == 7
        # the big statement analysed in the child (its text, or its summary when the analysis ran out of time)
        assert report["store_calls"] == 1 and len(report["big"]) == 1 and report["big"][0].startswith("INSERT")
        assert report["enriched"] >= 6 and report["leaked"] is False and report["history"] >= 1
        assert report["inherited"] == 0  # the parent's open spans, records and queue are the parent's
    # and the parent goes on: its locks were only borrowed
    pipeline.request("GET /after", 2)
    assert pipeline.provider.force_flush(10_000)
    assert any(s.name == "GET /after" for s in pipeline.slow.spans)


def test_children_of_an_instrumented_app_exit_while_the_parent_exports(receiver: Any, tmp_path: Path) -> None:
    """The real thing: opentelemetry-instrument, the OTLP exporter to a receiver, normal exits."""
    env = base_env(receiver, OTEL_METRICS_EXPORTER="otlp", OTEL_METRIC_EXPORT_INTERVAL="200")
    cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "fork_app.py", str(CHILDREN)]
    proc = subprocess.run(cmd, cwd=APPS, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["hung"] == 0 and result["exited"] == [0] * CHILDREN, (result, proc.stderr[-2000:])
    names = {f"/child/{i}" for i in range(CHILDREN)}
    spans = receiver.wait_for(lambda s: names <= {x["name"] for x in s}, timeout=120)
    roots = [s for s in spans if s["name"] in names]
    assert all(r["attributes"][A.DB_QUERY_COUNT] == 6 for r in roots)
    assert not any(b"secret-" in body for body in receiver.raw)


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
# what makes a lock, a semaphore or a condition (each holds a lock a fork can leave held)
_LOCK_MAKERS = {"Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "Event", "Barrier", "allocate_lock"}
PACKAGE = Path(otel_dbperf.__file__).parent


def test_every_lock_in_reach_is_registered(pipeline: Pipeline) -> None:
    """At run time: each lock held by the package's modules, their classes and the pipeline's objects
    is one the registry renews (whatever made it)."""
    registered = {id(lock) for _, lock in _held_at_fork()}
    owners: list[tuple[str, Any]] = []
    for name, module in list(sys.modules.items()):
        if name == "otel_dbperf" or name.startswith("otel_dbperf."):
            owners.append((name, module))
            owners += [(f"{name}.{k}", v) for k, v in vars(module).items() if isinstance(v, type)]
    p = pipeline
    objects = [p.processor, p.deriver, p.history, p.explainer, p.explainer._limiter, p.file, p.hooks]
    owners += [(type(o).__name__, o) for o in objects]
    found = [
        f"{where}.{attr}"
        for where, owner in owners
        for attr, value in vars(owner).items()
        if isinstance(value, _LOCK_TYPES) and id(value) not in registered
    ]
    assert not found, f"locks the registry does not renew: {found}"
    assert len(registered) > len(PIPELINE_LOCKS)


def test_no_module_makes_a_lock_but_the_registry() -> None:
    """By the source: a ``threading.Lock()`` (or RLock, Condition, Semaphore, ...) anywhere in the
    package but ``_forksafe`` would be a lock no fork renews; ``_forksafe.lock(name)`` it is."""
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_forksafe.py" and path.parent == PACKAGE:
            continue
        if path == PACKAGE / "dbmonitor" / "cli.py":
            continue  # ``otel-dbperf dbmonitor``'s own process (its stop event): never an app's, never forked
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("threading", "_thread", "multiprocessing"):
                offences += [f"{path.name}:{node.lineno} from {node.module} import {a.name}"
                             for a in node.names if a.name in _LOCK_MAKERS]  # fmt: skip
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _LOCK_MAKERS:
                base = node.func.value
                if isinstance(base, ast.Name) and base.id in ("threading", "_thread", "multiprocessing"):
                    offences.append(f"{path.name}:{node.lineno} {base.id}.{node.func.attr}()")
    assert not offences, offences
    # and the scan sees what it looks for
    sample = ast.parse("import threading\nx = threading.RLock()\n")
    assert any(isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "RLock" for n in ast.walk(sample))


def test_registered_locks_are_renewed_in_place_in_the_child() -> None:
    """A lock, an RLock and a semaphore held by another thread at the fork: free in the child, the same objects."""
    lock, rlock = _forksafe.lock("test.lock"), _forksafe.rlock("test.rlock")
    slots = _forksafe.bounded_semaphore("test.slots", 2)
    made = {id(lock), id(rlock), id(slots)}
    assert made <= {id(x) for _, x in _forksafe.registered()}
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock, rlock, slots, slots:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    try:
        assert held.wait(30)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = lock.acquire(blocking=False) and rlock.acquire(blocking=False) and rlock.acquire(blocking=False)
            ok = ok and slots.acquire(blocking=False) and slots.acquire(blocking=False)
            ok = ok and not slots.acquire(blocking=False) and made <= {id(x) for _, x in _forksafe.registered()}
            os._exit(0 if ok else 1)
    finally:
        release.set()
    codes, hung = wait_all([pid], CHILD_DEADLINE_S)
    thread.join(10)
    assert hung == 0 and codes == [0]
    assert lock.acquire(blocking=False) and rlock.acquire(blocking=False)  # the parent's: released by their holder
    lock.release()
    rlock.release()
