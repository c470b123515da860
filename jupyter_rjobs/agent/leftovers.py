"""What a job leaves behind when its code ends: processes it started that still run, and threads.

A process a job leaves running ends with the job (SIGTERM, then SIGKILL), whether it is a child
or an orphan that came to us (a job process is a subreaper); what it wrote before stays the job's,
and the job says on stderr which processes were ended. Threads cannot be ended from outside: a
process job's worker is replaced after such a job (its threads end with it), a host job's process
exits anyway, and a session's threads live on with what they print from then on dropped."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Collection, List, Optional

from .capture import FdCapture, Pipe, Sink, is_subreaper, orphan_threads
from .proctree import descendants

TERM_GRACE = 2.0  # seconds a leftover process has between SIGTERM and SIGKILL
PIPE_GRACE = 1.0  # seconds to read what ended leftovers still had in the job's pipes


def _state(pid: int) -> Optional[bytes]:
    """A process's state letter, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _running(pid: int) -> bool:
    return _state(pid) not in (None, b"Z", b"X")


def _has_children() -> bool:
    """Whether this process has any child at all (cheap: /proc/self/task/*/children), else a scan."""
    try:
        tasks = os.listdir("/proc/self/task")
        for task in tasks:
            with open(f"/proc/self/task/{task}/children", "rb") as children:
                if children.read().strip():
                    return True
        return False
    except OSError:
        return True  # no such file here: look the slow way


def left_processes() -> List[int]:
    """The processes below this one that still run (zombies are not running)."""
    if not _has_children():
        return []
    return [pid for pid in descendants(os.getpid()) if _running(pid)]


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as comm:
            return f"pid {pid} ({comm.read().decode(errors='replace').strip()})"
    except OSError:
        return f"pid {pid}"


def end_processes(pids: List[int], grace: float = TERM_GRACE) -> None:
    """SIGTERM ``pids`` (and whatever appears below us meanwhile), SIGKILL what is left after
    ``grace``, then reap those that are our children."""
    signalled = set(pids)
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline + 5:
        left = [pid for pid in descendants(os.getpid()) if _running(pid)]
        if not left:
            break
        if time.monotonic() >= deadline:
            _signal(left, signal.SIGKILL)
        signalled.update(left)
        time.sleep(0.02)
    for pid in signalled:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not ours (a grandchild its parent reaps), or reaped already


def _signal(pids: Collection[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def reap_zombies() -> None:
    """Collect every child that ended (a job's namespace is gone: nobody else will)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def finish_job(
    fds: FdCapture, job_pipes: List[Pipe], sink: Sink, threads_before: Collection[threading.Thread], lasting: bool
) -> bool:
    """End what the job left running and read the rest of its output into its sink; ``lasting``:
    the process lives on with its variables (a session). Returns False when the job left threads
    that only the end of this process can end."""
    pids = left_processes()
    names = [describe(pid) for pid in pids]
    if pids:
        end_processes(pids)
    fds.end(job_pipes, PIPE_GRACE, held=bool(pids) or not is_subreaper())  # none left: no one else holds them
    if not lasting:
        reap_zombies()
    if names:
        count = f"{len(names)} process{'es' if len(names) > 1 else ''}"
        sink.write("stderr", f"[rjob] ended {count} this job left running: {', '.join(names)}\n")
    threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    if not threads:
        return True
    listed = ", ".join(t.name for t in threads)
    if lasting:
        orphan_threads(threads)
        sink.write("stderr", f"[rjob] {len(threads)} thread(s) this job started still run ({listed}); what they print from now on is dropped\n")
    else:
        sink.write("stderr", f"[rjob] {len(threads)} thread(s) this job started still ran ({listed}); they end with its process\n")
    return False
