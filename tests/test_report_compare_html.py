"""The comparison's HTML page (``report --baseline ... --html``), opened in real headless Chromium."""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path

from support.chromium import FLAGS as CHROMIUM_FLAGS
from support.chromium import chromium as _chromium
from support.chromium import pixels as _pixels
from support.otlp_lines import DAY, T0, request, two_windows, write

from otel_dbperf.report.cli import main
from otel_dbperf.report.compare import EXIT_REGRESSION


def test_comparison_page_renders_in_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    new, old = two_windows(tmp_path)
    repeat = [("nnnn", 1.0)] * 8
    # N+1: /orders fixed, /cart new
    write(
        tmp_path / "old_n1.jsonl",
        [request("/orders", repeat, start=T0, n_plus_one=("nnnn", 8)), request("/cart", start=T0)],
    )
    write(
        tmp_path / "new_n1.jsonl",
        [request("/orders", start=T0 + DAY), request("/cart", repeat, start=T0 + DAY, n_plus_one=("nnnn", 8))],
    )
    page = tmp_path / "compare.html"
    args = [new, str(tmp_path / "new_n1.jsonl"), "--baseline", old, str(tmp_path / "old_n1.jsonl")]
    code = main(["report", *args, "--html", str(page), "--fail-on-regression"], out=io.StringIO())
    assert code == EXIT_REGRESSION
    html = page.read_text()
    assert "<script" not in html and "<link" not in html and " src=" not in html and "@import" not in html
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    assert "Regressed: 3 regression(s)" in text
    assert 'class="chart compare"' in text and 'class="chart routes-compare"' in text
    for heading in ("New slow queries (1)", "Slower queries (1)", "New N+1 (1)", "Fixed N+1 (1)", "Faster queries (1)"):
        assert heading in text, heading
    assert "SELECT t_iiii" in text and "/cart" in text and "/orders" in text
    shot = tmp_path / "compare.png"
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
    assert not [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    width, height, channels, pixels = _pixels(shot.read_bytes())
    assert (width, height) == (1200, 1400)

    def count(colour: tuple[int, int, int]) -> int:
        return sum(
            1 for i in range(0, len(pixels), channels) if all(abs(pixels[i + k] - colour[k]) <= 12 for k in range(3))
        )

    # the worse (red) and better (green) dots, the baseline's grey bars and today's blue bars are drawn
    assert count((0xB4, 0x23, 0x18)) > 200
    assert count((0x06, 0x76, 0x47)) > 100
    assert count((0x98, 0xA2, 0xB3)) > 300
    assert count((0x3D, 0x6F, 0xE0)) > 300
