"""
The whole suite, as the README and CI run it: C{python3 -m tests}, from the
top of a checkout; any arguments go to trial (C{--reporter=timing}, say).

Two trial runs, one after the other:

  - the unit and integration tests (every C{tests/test_*.py} module and
    every package under C{tests/} but C{e2e}) in two trial workers
    (C{-j2}): they use in-memory transports or loopback sockets on free
    ports, and share nothing;
  - then the end-to-end tests (C{tests.e2e}) in one process, one at a
    time: their checks of timing (gaps in the media, failover bounds)
    need the machine's cores to themselves, and each builds its own
    network namespaces.

The exit status is 0 only when both runs pass.  C{python3 -m
twisted.trial tests} runs the same tests in one process, one at a time,
in about a third more time.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import time

#: trial workers for the unit and integration tests
JOBS = 2


def suites() -> tuple[list[str], list[str]]:
    """
    @return: the modules and packages to run in parallel, and those to run
        alone (the end-to-end tests).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    parallel: list[str] = []
    alone: list[str] = []
    for info in sorted(pkgutil.iter_modules([here]), key=lambda i: i.name):
        name = f"tests.{info.name}"
        if info.name == "e2e":
            alone.append(name)
        elif info.ispkg or info.name.startswith("test_"):
            parallel.append(name)
    return parallel, alone


def main(argv: list[str]) -> int:
    parallel, alone = suites()
    trial = [sys.executable, "-m", "twisted.trial"]
    runs = [
        ("unit and integration tests", [*trial, f"-j{JOBS}", *argv, *parallel]),
        ("end-to-end tests", [*trial, *argv, *alone]),
    ]
    said = []
    failed = False
    for what, command in runs:
        print(f"== {what}: {' '.join(command[1:])}", flush=True)
        start = time.monotonic()
        code = subprocess.call(command)
        failed = failed or code != 0
        verdict = "passed" if code == 0 else f"FAILED (trial's exit status {code})"
        said.append(f"{what} {verdict} in {time.monotonic() - start:.0f} s")
    print("== " + "; ".join(said), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
