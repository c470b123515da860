"""Helpers the test modules share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import time
from typing import Callable

from jupyter_rjobs.agent.proctree import descendants


def in_ci() -> bool:
    """Under CI (CI=true, 1, yes): tests whose set-up is missing must fail, not skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pid_alive(pid: int) -> bool:
    """A process exists and is not a zombie (a dead child nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def process_tree_of(pid: int) -> list[int]:
    return [pid, *descendants(pid)]
