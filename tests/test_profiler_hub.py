"""The master's merged view of its workers' histories, without a server: hand-over files,
killed workers, the memory bounds (end to end under gunicorn/uvicorn: test_profiler_workers.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import asdict
from pathlib import Path

from otel_dbperf.profiler import QueryHistory
from otel_dbperf.profiler import hub as H


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _hand_over(directory: Path, pid: int, n: int) -> None:
    history = QueryHistory(100)
    for i in range(n):
        history.add(0.5 if i == 0 else 0.001, f"SELECT {i}", table="t", operation="SELECT", slow=i == 0,
                    timestamp=1000.0 + i)  # fmt: skip
    history.add_request("/books", n, 0.5, 10.0 * pid, 1)
    rows = [dict(asdict(e), pid=pid) for e in history.entries()]
    totals = dict(history.totals(), pid=pid, memory_rss_bytes=1, cpu_time_s=0.0)
    (directory / f"{pid}.final.json").write_text(json.dumps({"totals": totals, "entries": rows}))


def test_exited_workers_are_folded_in_and_bounded(tmp_path: Path) -> None:
    merged = H.MergedHistory(QueryHistory(10), str(tmp_path))
    for pid in (101, 102, 103):
        _hand_over(tmp_path, pid, 8)
    t = merged.totals()
    assert t["total_queries"] == 24 and t["slow_queries"] == 3 and t["max_duration_s"] == 0.5
    assert t["queries_by_table"] == {"t": 24}
    assert t["requests_by_route"] == {"/books": {"requests": 3, "db_queries": 24, "db_duration_s": 1.5,
                                                 "pool_wait_ms": 3060.0, "max_pool_wait_ms": 1030.0,
                                                 "pool_waited_requests": 3, "pool_timeouts": 3,
                                                 "cpu_bound_requests": 0, "http_n_plus_one_requests": 0,
                                                 "event_loop_blocked_requests": 0,
                                                 "sequential_queries_requests": 0}}  # fmt: skip
    assert t["workers"] == {"live": 0, "pids": [], "unresponsive": 0, "exited": 3, "killed": 0, "lost_entries": 0}
    assert t["kept"] == 10  # the exited workers' entries: at most max_history in all
    assert list(tmp_path.iterdir()) == []  # the files are consumed
    matching, slowest = merged.slowest(0.1, 5)
    assert matching == 1  # two workers' slow entries were pushed out by the last one's 8
    entry = merged.get(slowest[0].id)
    assert entry is not None and entry.statement == "SELECT 0" and slowest[0].id == (1 << H.PID_BITS) | entry.pid
    merged.reset()
    assert merged.totals()["total_queries"] == 0 and merged.entries() == []


def test_a_killed_worker_keeps_its_last_seen_totals(tmp_path: Path) -> None:
    merged = H.MergedHistory(QueryHistory(10), str(tmp_path))
    pid = _dead_pid()
    with socket.socket(socket.AF_UNIX) as sock:  # a socket nobody listens on any more: refused
        sock.bind(str(tmp_path / f"{pid}.sock"))
    merged._seen[pid] = {"total_queries": 7, "slow_queries": 1, "total_duration_s": 0.7, "max_duration_s": 0.3,
                         "queries_by_table": {"t": 7}, "queries_by_operation": {}, "kept": 7, "dropped": 0,
                         "evicted": 0, "requests_by_route": {"/a": {"requests": 2, "pool_timeouts": 1}}}  # fmt: skip
    merged.local.add_request("/a", 1, 0.1, 4.0, 0)
    t = merged.totals()
    assert t["requests_by_route"]["/a"]["requests"] == 3 and t["requests_by_route"]["/a"]["pool_timeouts"] == 1
    assert t["total_queries"] == 7 and t["workers"]["killed"] == 1 and t["workers"]["lost_entries"] == 7
    assert not (tmp_path / f"{pid}.sock").exists()
    assert merged.totals()["workers"]["killed"] == 1  # counted once


def test_a_worker_answers_and_hands_over_at_exit(tmp_path: Path) -> None:
    history = QueryHistory(10)
    history.add(0.2, "SELECT ?", slow=True)
    endpoint = H.WorkerEndpoint(history, str(tmp_path), os.getppid())
    endpoint.start()
    merged = H.MergedHistory(QueryHistory(10), str(tmp_path))
    merged.master_pid = -1  # the test process plays the worker; its entries must come over the socket
    t = merged.totals()
    assert t["workers"]["pids"] == [os.getpid()] and t["total_queries"] == 1 and endpoint.served == 1
    history.add_request("/w", 1, 0.2, 7.0, 0)
    assert merged.totals()["requests_by_route"]["/w"]["pool_wait_ms"] == 7.0  # asked over the socket
    [entry] = merged.entries()
    assert entry.id == (1 << H.PID_BITS) | os.getpid() and merged.get(entry.id) == entry
    merged.enabled = False
    assert history.enabled is False and (tmp_path / "disabled").exists()
    merged.enabled = True
    endpoint.at_exit()
    assert not (tmp_path / f"{os.getpid()}.sock").exists()
    assert merged.totals()["workers"] == {"live": 0, "pids": [], "unresponsive": 0, "exited": 1, "killed": 0,
                                          "lost_entries": 0}  # fmt: skip
    assert [e.statement for e in merged.entries()] == ["SELECT ?"]


def test_hand_over_files_are_bounded_when_the_master_does_not_collect(tmp_path: Path) -> None:
    for pid in range(H.MAX_RETIRED_FILES):
        (tmp_path / f"{pid + 1}.final.json").write_text("{}")
    endpoint = H.WorkerEndpoint(QueryHistory(10), str(tmp_path), os.getppid())
    endpoint.start()
    endpoint.at_exit()
    assert len(list(tmp_path.iterdir())) == H.MAX_RETIRED_FILES  # this worker's is not written


def test_hub_from_env() -> None:
    assert H.hub_from_env({H.HUB_ENV: "123:/tmp/x"}) == (123, "/tmp/x")
    assert H.hub_from_env({H.HUB_ENV: "x:/tmp"}) is None and H.hub_from_env({}) is None
    assert not H.is_spawned_worker_of((os.getppid(), "/tmp/x"), ["-c"])  # multiprocessing's resource tracker
    assert H.is_spawned_worker_of((os.getppid(), "/tmp/x"), ["-c", "--multiprocessing-fork"])
