"""What a job leaves behind when its code ends: processes it started that still run, and threads.

A process a job leaves running ends with the job (SIGTERM, then SIGKILL), whether it is a child
or an orphan that came to us (a job process is a subreaper); what it wrote before stays the job's,
and the job says on stderr which processes were ended. Threads cannot be ended from outside: a
process job's worker is replaced after such a job (its threads end with it), and a host job's
process exits anyway. A session is a lasting interpreter: what its job leaves (processes and
threads) lives on with its variables, and what it prints from then on is dropped."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Collection, Dict, List, Optional, Set, Tuple

from .capture import FdCapture, Pipe, Sink, is_subreaper, orphan_threads
from .proctree import descendants, process_start, process_tree, running

TERM_GRACE = 2.0  # seconds a leftover process has between SIGTERM and SIGKILL
PIPE_GRACE = 1.0  # seconds to read what ended leftovers still had in the job's pipes


def _has_children() -> bool:
    """Whether this process has any child at all, running or ended: one waitid that reaps
    nothing (WNOWAIT; ECHILD: none), else /proc/self/task/*/children."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return True  # a child (of any of our threads) that runs, or has ended and waits to be reaped
    except ChildProcessError:
        return False
    except (OSError, AttributeError):  # no waitid here: read /proc
        pass
    try:
        tasks = os.listdir("/proc/self/task")
        for task in tasks:
            with open(f"/proc/self/task/{task}/children", "rb") as children:
                if children.read().strip():
                    return True
        return False
    except OSError:
        return True  # no such file here: look the slow way


_kept: Set[Tuple[int, Optional[int]]] = set()  # (pid, start) a session's earlier jobs left running


def left_processes() -> List[int]:
    """The processes below this one that still run (zombies do not), but those earlier jobs of a
    session left running, and what those started since."""
    if not _has_children():
        return []
    children = process_tree()
    kept = {pid for pid, start in _kept if process_start(pid) == start}
    found: List[int] = []
    stack = [os.getpid()]
    while stack:
        for pid in children.get(stack.pop(), ()):
            if pid in kept:
                _keep(pid, children)
            else:
                found.append(pid)
                stack.append(pid)
    _kept.intersection_update((pid, process_start(pid)) for pid, _ in list(_kept))
    return [pid for pid in found if running(pid)]


def _keep(pid: int, children: Dict[int, List[int]]) -> None:
    """``pid`` and all below it run on as a session's: never a later job's to claim."""
    stack = [pid]
    while stack:
        current = stack.pop()
        _kept.add((current, process_start(current)))
        stack.extend(children.get(current, ()))


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
        left = [pid for pid in descendants(os.getpid()) if running(pid)]
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
    """End what the job left running and read the rest of its output into its sink. ``lasting``:
    this process lives on with its variables (a session): what the job left runs on, and what it
    prints from then on is dropped. Returns False when the job left anything running (a process
    job's worker is then replaced: its threads end, and no state of theirs reaches the next job)."""
    pids = left_processes()
    names = [describe(pid) for pid in pids]
    held = bool(pids) or not is_subreaper()  # with none left below a subreaper, nobody else holds its pipes
    if lasting:
        fds.end(job_pipes, 0, held, abandon=True)
        for pid in pids:
            _keep(pid, {})
    else:
        if pids:
            end_processes(pids)
        fds.end(job_pipes, PIPE_GRACE, held)
        reap_zombies()
    threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    if lasting:
        orphan_threads(threads)
    _say(sink, names, [t.name for t in threads], lasting)
    return not names and not threads


def _say(sink: Sink, processes: List[str], threads: List[str], lasting: bool) -> None:
    """One line on the job's stderr for what it left running, and what became of it."""
    if processes and lasting:
        sink.write("stderr", f"[rjob] processes this job started still run: {', '.join(processes)}; what they print from now on is dropped\n")
    elif processes:
        sink.write("stderr", f"[rjob] ended the processes this job left running: {', '.join(processes)}\n")
    if threads and lasting:
        sink.write("stderr", f"[rjob] threads this job started still run ({', '.join(threads)}); what they print from now on is dropped\n")
    elif threads:
        sink.write("stderr", f"[rjob] threads this job started still ran ({', '.join(threads)}); they end with its process\n")
