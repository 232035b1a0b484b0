"""What ``pytest --dbperf`` costs a test suite: the same suite run with and without it, interleaved.

Usage::

    python bench/pytest_guard.py [--repeat 10]       # the demo shop's suite (bench/guard_demo_suite)
    python bench/pytest_guard.py --suite DIR [--pythonpath DIR] [--rounds 7] [-- PYTEST ARGS]

Each round runs the suite once without and once with ``--dbperf`` (in alternating order), each in a
fresh ``python -m pytest`` process, and measures the process's wall time and CPU time (user + system,
from the OS) and the session time pytest prints. It prints every run, then the medians and the ratios
(with / without). Outcomes are printed too: a suite with an N+1 has more failures with ``--dbperf``
(the demo's /orders tests). The plugins this project's test extra installs that a foreign suite does
not use are turned off in both runs alike (``-p no:asyncio`` and the like), see ``COMMON``.

docs/testing.md has the figures measured on the demo's suite and on the Flask tutorial's suite
(``examples/tutorial`` of the Flask repository: ``--suite examples/tutorial --pythonpath examples/tutorial``).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_SUITE = HERE / "guard_demo_suite"
#: the same in both runs: no cache, and this project's test plugins that the measured suites do not use
COMMON = ["-q", "-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:django", "-p", "no:schemathesis",
          "-p", "no:hypothesispytest", "-p", "no:anyio"]  # fmt: skip
_SESSION = re.compile(r" in ([0-9.]+)s")
_OUTCOME = re.compile(r"(\d+) (passed|failed|error|errors|skipped)")


def run_once(suite: Path, guard: bool, pythonpath: str, extra: list[str], repeat: int = 1) -> dict[str, object]:
    # bytecode caches on, as on a developer's machine (an environment with PYTHONDONTWRITEBYTECODE set
    # compiles, and pytest re-rewrites, every module of the suite and of otel-dbperf in every run)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "DBPERF_")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["DEMO_SUITE_REPEAT"] = str(repeat)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    args = [sys.executable, "-m", "pytest", *COMMON, *(["--dbperf"] if guard else []), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=suite, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    session = _SESSION.search(last)
    if proc.returncode not in (0, 1):
        sys.exit(f"pytest exited {proc.returncode} in {suite}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {
        "wall": wall,
        "cpu": cpu,
        "session": float(session.group(1)) if session else float("nan"),
        "outcome": ", ".join(f"{n} {what}" for n, what in _OUTCOME.findall(last)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=DEMO_SUITE, help="the suite's directory (pytest's cwd)")
    parser.add_argument("--pythonpath", default="", help="PYTHONPATH for the suite (its package's directory)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of one run without and one with (default 7)")
    parser.add_argument("--repeat", type=int, default=1, help="the demo suite's tests this many times each")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    args = parser.parse_args(argv)
    suite = args.suite.resolve()
    pythonpath = str(Path(args.pythonpath).resolve()) if args.pythonpath else ""
    where = f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    print(f"suite: {suite}  (x{args.repeat}, {args.rounds} rounds, interleaved; {where})")
    runs: dict[bool, list[dict[str, object]]] = {False: [], True: []}
    run_once(suite, False, pythonpath, args.pytest_args, args.repeat)  # warm the file cache; not counted
    for round_ in range(args.rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for guard in order:
            result = run_once(suite, guard, pythonpath, args.pytest_args, args.repeat)
            runs[guard].append(result)
            print(f"  round {round_ + 1} {'--dbperf' if guard else 'plain   '}  wall {result['wall']:6.2f} s  "
                  f"cpu {result['cpu']:6.2f} s  session {result['session']:6.2f} s  ({result['outcome']})")  # fmt: skip
    print()
    print(f"{'median':<10}{'plain':>10}{'--dbperf':>10}{'ratio':>8}")
    for key in ("wall", "cpu", "session"):
        plain = statistics.median(float(r[key]) for r in runs[False])  # type: ignore[arg-type]
        guarded = statistics.median(float(r[key]) for r in runs[True])  # type: ignore[arg-type]
        print(f"{key + ' (s)':<10}{plain:>10.2f}{guarded:>10.2f}{guarded / plain:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
