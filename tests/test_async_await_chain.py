"""The await-chain location (issue 24 item 1) scenario by scenario, on this Python, with asyncio's C
tasks and with its pure-Python ones: tests/apps/await_chain_script.py, which needs neither
OpenTelemetry nor a database (run it with any supported Python the same way: ``python3.10
tests/apps/await_chain_script.py``). The end-to-end test through asyncpg, async SQLAlchemy and a
real server is tests/test_async_fanout.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import APPS


@pytest.mark.parametrize("tasks", ["c", "pure-python"])
def test_each_await_chain_scenario_is_located(tasks: str) -> None:
    cmd = [sys.executable, str(APPS / "await_chain_script.py")] + (["--pure-python"] if tasks != "c" else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failures"] == {} and result["pure_python"] is (tasks != "c"), result
