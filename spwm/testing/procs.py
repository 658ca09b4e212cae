"""
Processes seen through Linux's C{/proc}, for tests and benchmarks that
start a contact point with workers.
"""

from __future__ import annotations


def children(pid: int) -> list[int]:
    """
    The PIDs of the children of process C{pid} (its main thread's), or
    none when it is gone.
    """
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
