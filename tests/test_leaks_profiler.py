"""Nothing leaks, nothing opens: the in-app profiler behind a stock nginx (Debian's), under
cross-site pages in headless Chromium, with a stuck (SIGSTOP) or lying worker under a real
gunicorn, and after its master is killed with ``kill -9`` (gunicorn and uvicorn --workers)."""

from __future__ import annotations

import contextlib
import grp
import http.server
import json
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import REQUIRE_SERVICES, base_env, free_port, get, serve, server_output, until
from otlp_receiver import Receiver
from sqlalchemy import create_engine
from support.chromium import FLAGS as CHROMIUM_FLAGS
from support.chromium import chromium as _chromium

from otel_dbperf.profiler import ProfilerServer, QueryHistory, start
from otel_dbperf.profiler import hub as H
from otel_dbperf.profiler import server as server_module
from otel_dbperf.profiler.mount import Mount

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="pre-fork servers need fork")

TOKEN = "leak-test-token-0123456789abcdef"
PREFIX = "otel-dbperf-profiler-"


def _call(
    url: str, method: str = "GET", token: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _json(url: str, method: str = "GET", token: str | None = None, headers: dict[str, str] | None = None) -> Any:
    status, body = _call(url, method, token, headers)
    assert status == 200, (url, status, body[:500])
    return json.loads(body)


def _clean_output(output: str) -> None:
    assert "Traceback" not in output and "internal error" not in output, output[-4000:]


@pytest.fixture(scope="module")
def module_receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    from models import seed

    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'leaks.db'}"
    engine = create_engine(url)
    seed(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def token_app(
    module_receiver: Receiver, sqlite_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """gunicorn -w 2 (sync) serving a Flask app with the profiler mounted and a token; its
    temporary folder is the test's (the master's private directory is made there)."""
    tmp = tmp_path_factory.mktemp("hub")
    env = base_env(module_receiver, APP_DB_URL=sqlite_url, DBPERF_PROFILER_MOUNT="/profiler",
                   DBPERF_PROFILER_TOKEN=TOKEN, TMPDIR=str(tmp))  # fmt: skip
    with serve("gunicorn", "flask_app:app", env, "-w", "2") as srv:
        srv["tmp"] = tmp
        yield srv


# ------------------------------------------------------------------ nginx in front of the app


def _nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:
        reason = "nginx not installed (scripts/test installs Debian's nginx)"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return found


@contextlib.contextmanager
def nginx_proxy(upstream: str, tmp: Path) -> Iterator[str]:
    """A stock reverse proxy: nginx in the foreground with ``proxy_pass`` and nothing else
    (no Host or forwarding headers set); yields its base URL."""
    binary = _nginx()
    port = free_port()
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        (tmp / name).mkdir(exist_ok=True)
    user = ""
    if os.getuid() == 0:  # as root nginx would switch its worker to 'nobody'
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    (tmp / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {upstream};
        }}
    }}
}}
""")
    proc = subprocess.Popen(
        [binary, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "logs" / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "nginx exited"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def test_the_mount_without_a_token_serves_nothing_behind_nginx(
    module_receiver: Receiver, sqlite_url: str, tmp_path: Path
) -> None:
    env = base_env(module_receiver, APP_DB_URL=sqlite_url, DBPERF_PROFILER_MOUNT="/profiler")
    with serve("gunicorn", "flask_app:app", env, "-w", "2") as srv:
        port = int(srv["url"].rsplit(":", 1)[1])
        with nginx_proxy(f"http://127.0.0.1:{port}", tmp_path) as proxy:
            for _ in range(4):  # queries with file paths and trace ids
                assert get(proxy + "/author/1")[0] == 200
            # (before: the history answered through the proxy as soon as it was fed)
            until(lambda: _call(proxy + "/profiler/stats"), lambda r: r[0] != 200 or b'"total_queries":4' in r[1])
            ids = [(1 << H.PID_BITS) | pid for pid in _children(srv["proc"].pid)]
            assert ids, "no gunicorn workers found"
            requests = [
                ("GET", path)
                for path in (
                    "/profiler/stats",
                    "/profiler/slow-queries?threshold=0",
                    "/profiler/report",
                    "/profiler/health",
                    "/profiler/openapi.json",
                )
            ]
            requests += [("GET", f"/profiler/query-details/{entry_id}") for entry_id in ids]
            requests += [("POST", "/profiler/reset"), ("POST", "/profiler/toggle?enable=false")]  # fmt: skip
            for base in (proxy, srv["url"]):  # through nginx, and straight from loopback alike
                for method, path in requests:
                    status, body = _call(base + path, method)
                    assert status != 200, (base, method, path, status, body[:300])
                    assert b"success" not in body and b"trace_id" not in body and b"flask_app.py" not in body
        output = server_output(srv)
    said = [line for line in output.splitlines() if "DBPERF_PROFILER_MOUNT" in line]
    assert len(said) == 1 and "DBPERF_PROFILER_TOKEN" in said[0], output[-3000:]  # one line, from the master
    _clean_output(output)


def test_the_mount_with_a_token_works_behind_nginx(token_app: dict[str, Any], tmp_path: Path) -> None:
    port = int(token_app["url"].rsplit(":", 1)[1])
    with nginx_proxy(f"http://127.0.0.1:{port}", tmp_path) as proxy:
        assert _call(proxy + "/profiler/stats")[0] == 401
        assert _call(proxy + "/profiler/stats", token="wrong-token-0123456789abcdef")[0] == 401
        assert _json(proxy + "/profiler/stats", token=TOKEN)["data"]["workers"]["live"] >= 1
        assert _json(proxy + "/profiler/health")["status"] in ("healthy", "degraded")
        # a page of another site cannot change state, not even with the token
        status, _ = _call(proxy + "/profiler/reset", "POST", TOKEN, {"Sec-Fetch-Site": "cross-site"})
        assert status == 403
    _clean_output(server_output(token_app))


# ------------------------------------------------------------------ cross-site pages in Chromium


class _Page(http.server.ThreadingHTTPServer):
    """Another origin (another loopback port): serves one page whose script sends ``no-cors``
    POSTs to the profiler, then reports what became of them; the page's image is held until
    then, so its load event (when Chromium dumps the DOM and exits) waits for the requests."""

    daemon_threads = True

    def __init__(self, target: str) -> None:
        self.target = target
        self.reported = threading.Event()
        self.report = ""
        super().__init__(("127.0.0.1", 0), _PageHandler)


class _PageHandler(http.server.BaseHTTPRequestHandler):
    server: _Page

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/done"):
            self.server.report = self.path
            self.server.reported.set()
            body, kind = b"ok", "text/plain"
        elif self.path == "/hold.gif":
            self.server.reported.wait(30)  # a hang guard
            body, kind = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif"
        else:
            target = json.dumps(self.server.target)
            body = f"""<!doctype html><html><body><p id=out>sending</p><img src="/hold.gif">
<script>
const target = {target};
const sent = [target + "/profiler/toggle?enable=false", target + "/profiler/reset"].map(
  (url) => fetch(url, {{method: "POST", mode: "no-cors"}}));
Promise.allSettled(sent).then((results) => {{
  const what = results.map((r) => r.status).join(",");
  document.getElementById("out").textContent = what;
  return fetch("/done?" + what);
}});
</script></body></html>""".encode()
            kind = "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_cross_site_page_in_chromium_cannot_toggle_or_reset(tmp_path: Path) -> None:
    chromium = _chromium()
    history = QueryHistory(10)
    for i in range(3):
        history.add(0.2, f"SELECT {i}", slow=True)
    server = start("127.0.0.1:0", None, history)  # the token-less API on its own port
    page = _Page(server.url)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    try:
        profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
        run = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
             f"http://127.0.0.1:{page.server_address[1]}/"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        # both POSTs reached the profiler and were answered (an opaque response: the page reads nothing)
        assert page.report == "/done?fulfilled,fulfilled", (page.report, run.stdout[-2000:])
        assert history.enabled is True  # not toggled off
        assert history.totals()["total_queries"] == 3 and len(history.entries()) == 3  # not reset
        assert server.errors == 0
    finally:
        page.shutdown()
        page.server_close()
        server.stop()


def _post(server: ProfilerServer, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    status, body = _call(server.url + path, "POST", headers=headers)
    return status, json.loads(body)


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port of the same host is the same site
        {"Origin": "http://127.0.0.1:1"},
        {"Origin": "null"},
        {"Content-Type": "text/plain"},  # what a form or a simple fetch sends, even without Origin
        {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
        {"Content-Type": "multipart/form-data; boundary=x"},
    ],
)
def test_state_changing_browser_requests_are_refused_on_the_own_port(headers: dict[str, str]) -> None:
    history = QueryHistory(10)
    history.add(0.2, "SELECT 1", slow=True)
    server = start("127.0.0.1:0", None, history)
    try:
        for path in ("/profiler/reset", "/profiler/toggle?enable=false"):
            status, body = _post(server, path, headers)
            assert status in (403, 415) and body["status"] == "error", (path, status, body)
        assert history.enabled and history.totals()["total_queries"] == 1
        # reading stays as before (a cross-origin page cannot read the answer: no CORS header)
        assert _call(server.url + "/profiler/stats", headers=headers)[0] == 200
        # a client that is no browser (curl, a script) changes state as before
        assert _post(server, "/profiler/reset", {})[0] == 200
        assert _post(server, "/profiler/reset", {"Sec-Fetch-Site": "none"})[0] == 200  # typed by the user
        assert _post(server, "/profiler/reset", {"Content-Type": "application/json"})[0] == 200
        assert server.errors == 0
    finally:
        server.stop()


# ------------------------------------------------------------------ a stuck or lying worker


def _listener(path: Path) -> socket.socket:
    """A worker that never answers: it listens, and never accepts."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _asked(sock: socket.socket) -> int:
    """How many connections are waiting on a silent worker (they are taken: the next count is new)."""
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


class _LyingWorker:
    """A worker that answers every request of the master with ``reply(request)`` (raw bytes)."""

    def __init__(self, path: Path, reply: Callable[[dict[str, Any]], bytes]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.reply = reply
        self.asked = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5)
                    raw = b""
                    while not raw.endswith(b"\n"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        raw += chunk
                    self.asked += 1
                    conn.sendall(self.reply(json.loads(raw)))
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def _good_totals(pid: int) -> dict[str, Any]:
    history = QueryHistory(10)
    history.add(0.01, "SELECT 1", table="t", operation="SELECT")
    return dict(history.totals(), pid=pid, memory_rss_bytes=1000, cpu_time_s=0.5)


def _good_row(pid: int) -> dict[str, Any]:
    from dataclasses import asdict

    history = QueryHistory(10)
    history.add(0.3, "SELECT 2", slow=True, timestamp=1000.0)
    return dict(asdict(history.entries()[0]), pid=pid)


def _lies(kind: str, pid: int) -> Callable[[dict[str, Any]], bytes]:
    """A worker's broken answers: NaN where a number goes, a missing key, a wrong type, no answer."""

    def reply(request: dict[str, Any]) -> bytes:
        op = request.get("op")
        totals, row = _good_totals(pid), _good_row(pid)
        if kind == "nan":
            totals["total_duration_s"] = math.nan
            row["duration_s"] = math.nan
        elif kind == "missing":
            del totals["slow_queries"]
            del row["statement"]
        elif kind == "type":
            totals["total_queries"] = "many"
            row["duration_s"] = "slow"
        elif kind == "shape":
            totals["queries_by_table"] = [["t", 1]]
            totals["requests_by_route"] = {"/a": [["requests", 1]]}
            row = [list(item) for item in row.items()]  # type: ignore[assignment]
        elif kind == "empty":
            return b""
        if op == "totals":
            return json.dumps(totals).encode()
        if op == "entries":
            return json.dumps([row]).encode()
        if op == "slowest":
            return json.dumps({"matching": 1, "entries": [row]}).encode()
        if op == "get":
            return json.dumps(row).encode()
        return b"true"

    return reply


@pytest.fixture
def merged_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[H.MergedHistory, ProfilerServer]]:
    monkeypatch.setattr(H, "ASK_TIMEOUT_S", 0.5)
    local = QueryHistory(10)
    local.add(0.01, "SELECT 0", table="t", operation="SELECT")
    merged = H.MergedHistory(local, str(tmp_path))
    server = start("127.0.0.1:0", None, merged)
    yield merged, server
    server.stop()
    assert server.errors == 0


def _sleepers(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(["sleep", "60"]) for _ in range(n)]


def test_health_never_asks_the_workers(merged_server: tuple[H.MergedHistory, ProfilerServer], tmp_path: Path) -> None:
    merged, server = merged_server
    [alive] = _sleepers(1)
    silent = _listener(tmp_path / f"{alive.pid}.sock")
    try:
        for _ in range(5):
            health = _json(server.url + "/profiler/health")
            assert health["status"] == "healthy" and health["total_queries"] == 1
        assert _asked(silent) == 0  # health connected to no worker
        stats = _json(server.url + "/profiler/stats")["data"]
        assert stats["workers"]["unresponsive"] == 1 and stats["workers"]["live"] == 0
        assert _asked(silent) == 1  # stats did ask
    finally:
        silent.close()
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("kind", ["nan", "missing", "type", "shape", "empty"])
def test_a_lying_worker_is_unresponsive_never_a_500(
    merged_server: tuple[H.MergedHistory, ProfilerServer], tmp_path: Path, kind: str
) -> None:
    merged, server = merged_server
    honest_proc, liar_proc = _sleepers(2)
    honest = _LyingWorker(tmp_path / f"{honest_proc.pid}.sock", _lies("honest", honest_proc.pid))
    liar = _LyingWorker(tmp_path / f"{liar_proc.pid}.sock", _lies(kind, liar_proc.pid))
    try:
        stats = _json(server.url + "/profiler/stats")["data"]
        assert stats["workers"]["unresponsive"] == 1 and stats["workers"]["pids"] == [honest_proc.pid], stats
        assert stats["total_queries"] == 2  # the master's and the honest worker's
        report = _json(server.url + "/profiler/report?last_n_queries=10")["data"]
        assert [q["query"] for q in report["top_slow_queries"]] == ["SELECT 2", "SELECT 0"]
        slow = _json(server.url + "/profiler/slow-queries?threshold=0.1")["data"]
        assert [q["pid"] for q in slow["queries"]] == [honest_proc.pid]
        status, _ = _call(server.url + f"/profiler/query-details/{(1 << H.PID_BITS) | liar_proc.pid}")
        assert status == 404  # its entry cannot be read: not there
        assert (
            _json(server.url + f"/profiler/query-details/{(1 << H.PID_BITS) | honest_proc.pid}")["data"]["query"]
            == "SELECT 2"
        )
        assert _json(server.url + "/profiler/reset", "POST")["data"]["reset"] is True
        assert liar.asked >= 4
    finally:
        honest.close()
        liar.close()
        for proc in (honest_proc, liar_proc):
            proc.kill()
            proc.wait()


def test_a_bad_hand_over_file_is_a_lost_worker_not_a_500(
    merged_server: tuple[H.MergedHistory, ProfilerServer], tmp_path: Path
) -> None:
    merged, server = merged_server
    totals = _good_totals(4242)
    totals["max_duration_s"] = math.nan
    (tmp_path / "4242.final.json").write_text(json.dumps({"totals": totals, "entries": []}))
    (tmp_path / "4243.final.json").write_text(json.dumps({"totals": {"total_queries": 1}, "entries": [{}]}))
    stats = _json(server.url + "/profiler/stats")["data"]
    assert stats["total_queries"] == 1 and stats["workers"]["killed"] == 2 and stats["workers"]["exited"] == 0
    assert list(tmp_path.iterdir()) == []


def test_the_fan_out_asks_every_worker_at_once(
    merged_server: tuple[H.MergedHistory, ProfilerServer], tmp_path: Path
) -> None:
    """Silent workers cost one fan-out deadline, not one each: all three are asked before any
    of them is given up (seen from the workers' side while the master waits)."""
    merged, server = merged_server
    procs = _sleepers(3)
    silent = [_listener(tmp_path / f"{p.pid}.sock") for p in procs]
    H.ASK_TIMEOUT_S = 30.0  # a hang guard: the fan-out is watched while it waits
    conns: dict[int, socket.socket] = {}

    def take() -> int:
        for i, sock in enumerate(silent):
            if i not in conns:
                with contextlib.suppress(BlockingIOError):
                    conns[i] = sock.accept()[0]
        return len(conns)

    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_call, server.url + "/profiler/stats")
            assert until(take, lambda n: n == 3, timeout=20) == 3
            for conn in conns.values():  # each has the request, and the master still waits on each
                conn.setblocking(False)
                data, closed = b"", False
                while True:
                    try:
                        chunk = conn.recv(4096)
                    except BlockingIOError:
                        break
                    if not chunk:
                        closed = True
                        break
                    data += chunk
                assert data.endswith(b"\n") and not closed, (data, closed)
            for conn in conns.values():
                conn.close()  # a silent answer: the fan-out ends
            status, body = pending.result(timeout=60)
        assert status == 200 and json.loads(body)["data"]["workers"]["unresponsive"] == 3
    finally:
        for sock in silent:
            sock.close()
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_mounted_fan_out_holds_one_request_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second mounted request that needs the workers, while one waits on them, is answered
    503 at once instead of holding another thread of the app; health is not limited."""
    release = threading.Event()
    entered = threading.Event()

    def respond(method: str, path: str, query: str, authorization: str | None) -> Any:
        if path.endswith("/stats"):
            entered.set()
            release.wait(30)  # a hang guard
        return 200, {"status": "success", "data": {}}, {}

    mount = Mount("/profiler", TOKEN, respond)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(mount.answer, "GET", "/profiler/stats", "", auth)
        assert entered.wait(30)
        second = pool.submit(mount.answer, "GET", "/profiler/report", "", auth)
        try:
            status, headers, _ = second.result(timeout=20)
            assert status == 503 and ("Retry-After", "1") in headers
            assert mount.answer("GET", "/profiler/health", "", {})[0] == 200
        finally:
            release.set()
        assert first.result(timeout=30)[0] == 200
    # unauthenticated requests are answered by the worker: never relayed
    assert mount.answer("GET", "/profiler/stats", "", {})[0] == 401


def _hub_directory(tmp: Path, exclude: Collection[Path] = ()) -> Path:
    found = [p for p in tmp.iterdir() if p.name.startswith(PREFIX) and p not in exclude]
    assert len(found) == 1, found
    return found[0]


def test_a_stuck_worker_does_not_starve_the_app(token_app: dict[str, Any]) -> None:
    srv = token_app
    api = srv["url"] + "/profiler"
    stats = until(lambda: _json(api + "/stats", token=TOKEN)["data"], lambda s: s["workers"]["live"] == 2)
    assert stats["workers"]["live"] == 2, stats
    hub = _hub_directory(srv["tmp"])
    observer, liar_proc = _sleepers(2)
    silent = _listener(hub / f"{observer.pid}.sock")  # a worker that never answers, and counts who asked
    liar = _LyingWorker(hub / f"{liar_proc.pid}.sock", _lies("missing", liar_proc.pid))
    victim = stats["workers"]["pids"][0]
    os.kill(victim, signal.SIGSTOP)
    try:
        # a flood of unauthenticated health requests while the app serves (bounded, loopback only)
        stop = threading.Event()
        statuses: list[int] = []

        def flood() -> None:
            for _ in range(40):
                if stop.is_set():
                    return
                statuses.append(_call(api + "/health")[0])

        with ThreadPoolExecutor(8) as pool:
            floods = [pool.submit(flood) for _ in range(8)]
            until(lambda: len(statuses), lambda n: n >= 8)
            app_status, _ = _call(srv["url"] + "/author/1")
            flood_running = not all(f.done() for f in floods)
            stop.set()
            for f in floods:
                f.result(timeout=120)
        assert app_status == 200 and flood_running  # the app answered while the flood went on
        assert statuses and set(statuses) == {200}, statuses
        assert _asked(silent) == 0  # no health request asked any worker

        # the stuck worker, the silent and the lying one: unresponsive, within the fan-out deadline
        stats = _json(api + "/stats", token=TOKEN)["data"]
        assert stats["workers"]["live"] == 1 and stats["workers"]["unresponsive"] == 3, stats
        assert _asked(silent) == 1
        assert _json(api + "/slow-queries?threshold=0", token=TOKEN)["status"] == "success"
    finally:
        with contextlib.suppress(ProcessLookupError):  # (gunicorn kills a worker stuck past its timeout)
            os.kill(victim, signal.SIGCONT)
        silent.close()
        liar.close()
        for proc in (observer, liar_proc):
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(hub / f"{observer.pid}.sock")
        with contextlib.suppress(OSError):
            os.unlink(hub / f"{liar_proc.pid}.sock")
    assert (
        until(lambda: _json(api + "/stats", token=TOKEN)["data"], lambda s: s["workers"]["live"] == 2)["workers"][
            "unresponsive"
        ]
        == 0
    )
    _clean_output(server_output(srv))


# ------------------------------------------------------------------ a master killed with kill -9

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _master_directory(tmp: Path, name: str, namespace: int | None) -> Path:
    """A directory as a master makes it (named for its pid, its pid namespace in a file)."""
    path = tmp / f"{PREFIX}{name}"
    path.mkdir(mode=0o700)
    if namespace is not None:
        (path / "pid-namespace").write_text(str(namespace))
    (path / "123.final.json").write_text("{}")
    return path


@pytest.mark.parametrize(
    "launcher", ["uvicorn leakapp:asgi --workers 2 --timeout-worker-healthcheck 60", "gunicorn leakapp:app -w 2"]
)
def test_a_killed_master_leaves_no_directory(module_receiver: Receiver, tmp_path: Path, launcher: str) -> None:
    (tmp_path / "leakapp.py").write_text(APP)
    tmp = Path(tempfile.mkdtemp(prefix="lp-", dir="/tmp"))  # short: a Unix socket path has ~100 bytes
    try:
        _killed_master(module_receiver, tmp_path, tmp, launcher)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _killed_master(receiver: Receiver, app_dir: Path, tmp: Path, launcher: str) -> None:
    ns = _pid_namespace()
    stale = _master_directory(tmp, f"{_dead_pid()}-stale000", ns)  # a master killed earlier
    kept = {
        _master_directory(tmp, f"{os.getpid()}-alive000", ns),  # a running master's
        _master_directory(tmp, f"{_dead_pid()}-other000", ns + 1),  # another pid namespace's: not ours to judge
        _master_directory(tmp, f"{_dead_pid()}-older000", None),  # not known to be ours
    }
    port = free_port()
    env = base_env(receiver, DBPERF_PROFILER_ADDR=f"127.0.0.1:{port}", TMPDIR=str(tmp))
    kind, app, *args = launcher.split()
    with serve(kind, app, env, *args, cwd=app_dir) as srv:
        master = srv["proc"].pid
        try:
            stats = until(lambda: _json(f"http://127.0.0.1:{port}/profiler/stats")["data"],
                           lambda s: s["workers"]["live"] == 2)  # fmt: skip
            assert stats["workers"]["live"] == 2, (stats, server_output(srv)[-3000:])
            assert not stale.exists()  # cleaned up at start
            assert all(path.exists() for path in kept)
            hub = _hub_directory(tmp, kept)
            assert hub.name.startswith(f"{PREFIX}{master}-")
            os.kill(master, signal.SIGKILL)
            srv["proc"].wait(timeout=30)
            # the workers notice their master is gone: they stop answering and remove its directory
            assert not until(lambda: hub.exists(), lambda exists: not exists), list(hub.iterdir())
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master, signal.SIGKILL)  # the orphaned workers (uvicorn leaves them running)
        output = server_output(srv)
    assert "Traceback" not in output, output[-3000:]
    assert {p for p in tmp.iterdir() if p.name.startswith(PREFIX)} == kept


def test_a_worker_without_pidfds_notices_its_master_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the system has no pidfd, a worker looks at its parent now and then (here: its
    parent is not the master it was given, as after the master died)."""
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    monkeypatch.setattr(H, "PARENT_CHECK_S", 0.05)
    short = Path(tempfile.mkdtemp(prefix="lp-"))  # a socket path fits in 108 bytes (tmp_path may not)
    directory = short / f"{PREFIX}1-x"
    directory.mkdir()
    try:
        endpoint = H.WorkerEndpoint(QueryHistory(10), str(directory), master_pid=_dead_pid())
        endpoint.start()
        assert not until(directory.exists, lambda exists: not exists, timeout=20)
        endpoint.at_exit()  # nothing left to hand over to
        assert not directory.exists()
    finally:
        shutil.rmtree(short, ignore_errors=True)


# ------------------------------------------------------------------ the HTTP server's own loop


def test_the_server_sleeps_until_a_request_and_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No wake-up every half second while idle (serve_forever's poll), and stop() does not wait for one."""
    wakes: list[float] = []
    original = server_module._Server.service_actions

    def counted(self: Any) -> None:
        wakes.append(time.monotonic())
        original(self)

    monkeypatch.setattr(server_module._Server, "service_actions", counted)
    server = start("127.0.0.1:0", None, QueryHistory(10))
    thread = server._thread
    time.sleep(1.2)
    assert wakes == []  # idle: the serving thread slept
    _json(server.url + "/profiler/health")
    server.stop()
    assert not thread.is_alive()
