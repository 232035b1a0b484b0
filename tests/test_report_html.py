"""The HTML report, opened in real headless Chromium."""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path

from support.chromium import FLAGS as CHROMIUM_FLAGS
from support.chromium import chromium as _chromium
from support.chromium import pixels as _pixels

from otel_dbperf.report.cli import EXIT_OK, main

SAMPLE = Path(__file__).parent / "data" / "collector_file_exporter.jsonl"


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "report.html"
    assert main(["report", str(SAMPLE), "--html", str(page)], out=io.StringIO()) == EXIT_OK
    html = page.read_text()
    # self-contained: nothing to fetch
    assert "<script" not in html and "<link" not in html and " src=" not in html and "@import" not in html
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
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
