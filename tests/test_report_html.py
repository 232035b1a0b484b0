"""The HTML report, opened in real headless Chromium."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest
from conftest import REQUIRE_SERVICES

from otel_dbperf.cli import EXIT_OK, main

SAMPLE = Path(__file__).parent / "data" / "collector_file_exporter.jsonl"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        reason = "Chromium not installed (scripts/test installs Debian's chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return found


def _pixels(png: bytes) -> tuple[int, int, int, bytes]:
    """Width, height, channels and raw pixel rows of an 8-bit non-interlaced PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = channels = 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and body[12] == 0, "8-bit, non-interlaced"
            channels = {2: 3, 6: 4, 0: 1, 4: 2}[color]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = bytearray(), bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b, c = prev[x], prev[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows += line
        prev = line
    return width, height, channels, bytes(rows)


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "report.html"
    assert main(["report", str(SAMPLE), "--html", str(page)], out=io.StringIO()) == EXIT_OK
    html = page.read_text()
    # self-contained: nothing to fetch
    assert "<script" not in html and "<link" not in html and " src=" not in html and "@import" not in html
    profile = tempfile.mkdtemp(prefix="chromium-")
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "otel-dbperf report" in dom.stdout and "Top queries by total DB time" in dom.stdout
    assert dom.stdout.count('class="chart latency"') == 3 and 'class="chart routes"' in dom.stdout
    assert "/srv/shop/app.py:92" in dom.stdout
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1200,1400",
            f"--screenshot={shot}",
            "--enable-logging=stderr",
            "--v=0",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    width, height, channels, pixels = _pixels(shot.read_bytes())
    assert (width, height) == (1200, 1400)
    total = width * height
    non_white = sum(1 for i in range(0, len(pixels), channels) if min(pixels[i : i + 3]) < 235)
    assert non_white > total * 0.01, "the screenshot is blank"
    # the orange DB-time bars of the routes chart are there
    orange = sum(
        1
        for i in range(0, len(pixels), channels)
        if pixels[i] > 190 and 50 < pixels[i + 1] < 110 and pixels[i + 2] < 60
    )
    assert orange > 500
