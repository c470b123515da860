"""What a host server does once its kernel's connection has ended (a kernel that exited or was
killed, a network that came back after the kernel gave up, an sshd that dropped it).

At once it lets go of every job and session it forwards (their ``owner`` files go), so that a
new kernel's ``connect`` adopts them, and its spare pair ends (its control pipe closes). The
kernel's non-detached work (jobs it neither detached nor released, sessions it did not
disconnect) is then given ``grace`` seconds: enough for the kernel to come back after a network
partition (it reconnects for ``reconnect_for`` seconds). What no new server has taken over by
then is ended: a job is stopped (its supervisor writes Stopped into its spool, which stays), a
session is closed. A server with no such work exits at once."""

from __future__ import annotations

import os
import signal
import time
from typing import Dict, Iterable, Optional, Tuple

from .proctree import alive
from .spool import read_json


def owned_by(path: str, owner: bytes) -> bool:
    """Whether the ``owner`` file in ``path`` (a spool or a session's directory) names this server."""
    try:
        with open(os.path.join(path, "owner"), "rb") as f:
            return f.read() == owner
    except OSError:
        return False


def let_go(path: str, owner: bytes) -> None:
    """Remove ``path``'s owner file if it still names this server (a new one may have taken it)."""
    if owned_by(path, owner):
        try:
            os.unlink(os.path.join(path, "owner"))
        except OSError:
            pass


def taken_over(path: str) -> bool:
    """Whether another server forwards it now (its owner file came back, naming someone else)."""
    return os.path.exists(os.path.join(path, "owner"))


def end_orphaned_work(jobs: Dict[str, Tuple[str, str]], sessions: Iterable[str], owner: bytes,
                      grace: Optional[float], stop_grace: float = 3.0) -> None:
    """Wait ``grace`` seconds for a new server to take over ``jobs`` ({instance: (spool,
    supervisor pid file)}) and ``sessions`` (their directories); then end what nobody took.
    ``None``: the kernel may come back at any time, so nothing is ended."""
    from .session import close_session

    for path in [*(spool for spool, _ in jobs.values()), *sessions]:
        let_go(path, owner)
    if grace is None or (not jobs and not sessions):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        jobs = {i: j for i, j in jobs.items() if os.path.isdir(j[0]) and not taken_over(j[0]) and _running(j[1])}
        sessions = [s for s in sessions if os.path.isdir(s) and not taken_over(s)]
        if not jobs and not sessions:
            return
    supervisors = []
    for _spool, pid_file in jobs.values():
        process = read_json(pid_file) or {}
        pid, start = int(process.get("pid", 0)), process.get("start")
        if alive(pid, start):
            os.kill(pid, signal.SIGTERM)  # the supervisor stops the job's tree and writes Stopped
            supervisors.append((pid, start))
    for path in sessions:
        close_session(path)
    kill_at = time.monotonic() + stop_grace
    while supervisors and time.monotonic() < kill_at:
        time.sleep(0.1)
        supervisors = [s for s in supervisors if alive(*s)]
    for pid, _ in supervisors:
        try:
            os.kill(pid, signal.SIGUSR1)  # the supervisor kills the job's whole tree
        except OSError:
            pass


def _running(pid_file: str) -> bool:
    process = read_json(pid_file) or {}
    return alive(int(process.get("pid", 0)), process.get("start"))
