"""Runs one of the pytest guard's example suites (tests/guard_suites/NAME) in its own pytest process,
and reads each test's outcome and failure message from its JUnit XML."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

SUITES = Path(__file__).resolve().parent.parent / "guard_suites"


@dataclass
class Run:
    returncode: int
    output: str  # stdout and stderr
    outcomes: dict[str, str]  # test name -> "passed", "failed", "error" or "skipped"
    messages: dict[str, str]  # test name -> the failure's text (message and details)


def suite_line(suite: str, file: str, name: str) -> int:
    """The line of ``guard_suites/SUITE/FILE`` marked ``# line: NAME``."""
    for number, line in enumerate((SUITES / suite / file).read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# line: {name}"):
            return number
    raise LookupError(name)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without pytest's, xdist's and otel-dbperf's own variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DBPERF_", "OTEL_", "DJANGO_"))}
    env.update(extra)
    return env


def run_suite(suite: str, tmp: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> Run:
    junit = tmp / f"{suite}-junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args, f"--junitxml={junit}"],
        cwd=SUITES / suite,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = case.get("name", "")
            outcome = "passed"
            for kind in ("failure", "error", "skipped"):
                found = case.find(kind)
                if found is not None:
                    outcome = "failed" if kind == "failure" else kind
                    messages[name] = f"{found.get('message', '')}\n{found.text or ''}"
                    break
            outcomes[name] = outcome
    return Run(proc.returncode, proc.stdout + proc.stderr, outcomes, messages)


def expected_outcome(name: str) -> str:
    """The outcome a suite's test names: ``..._fails`` or ``..._passes``/``..._pass``."""
    if name.endswith("_fails"):
        return "failed"
    if name.endswith(("_passes", "_pass")) or "_pass_" in name:
        return "passed"
    raise AssertionError(f"{name} names no outcome")
