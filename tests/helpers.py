"""Helpers the test modules share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import time
from typing import Callable

import pytest

from jupyter_rjobs.agent.proctree import descendants, running


def in_ci() -> bool:
    """Under CI (CI=true, 1, yes): tests whose set-up is missing must fail, not skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(what: str, reason: str) -> None:
    """A tier's prerequisite is missing: under CI the test fails (the tier must run there);
    elsewhere it skips, saying what it needs."""
    if in_ci():
        pytest.fail(f"{what} cannot run: {reason}")
    pytest.skip(f"{what} needs {reason}")


def start_tier(start: Callable[[], object], needs: str) -> None:
    """Start a test tier's set-up (a lab of sshds, say). If it fails: under CI the error stands
    (the tier must run there); elsewhere the test skips, saying what it needs and why it failed."""
    try:
        start()
    except Exception as exc:  # noqa: BLE001 - any set-up failure: an error in CI, a skip elsewhere
        if in_ci():
            raise
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        pytest.skip(f"{needs}: {reason}")


def pid_alive(pid: int) -> bool:
    """A process exists and is not a zombie (a dead child nobody has reaped yet)."""
    return running(pid)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def process_tree_of(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def leaves_a_printing_child(*, before: str = "", value: str = "child.pid") -> str:
    """Job code that leaves a child printing ``leak1`` .. ``leak8`` every 0.3 s, and ends only once
    the child has printed its first line (it touches a file after each line). A job that ended at
    once could, under load, end its child before the child had printed anything. ``before`` runs
    first; ``value`` is the job's value."""
    return (
        "import os, subprocess, tempfile, time\n"
        + before
        + "marker = os.path.join(tempfile.mkdtemp(), 'printed')\n"
        "loop = 'for i in 1 2 3 4 5 6 7 8; do echo leak$i; touch \"$0\"; sleep 0.3; done'\n"
        "child = subprocess.Popen(['sh', '-c', loop, marker])\n"
        "while not os.path.exists(marker):\n"
        "    time.sleep(0.01)\n"
        + value
    )
