"""Processes: the tree below a process (Linux /proc), signalling all of it, noticing a dead
parent, a process's identity (pid + start time), and how a process ended, in words."""

from __future__ import annotations

import os
import signal
import time
from typing import Dict, List, Optional


def process_tree() -> Dict[int, List[int]]:
    """Parent pid -> the pids of its children, from one pass over /proc (empty elsewhere)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return children


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def descendants(pid: int, tree: Optional[Dict[int, List[int]]] = None) -> List[int]:
    """Every process below ``pid`` (Linux /proc; elsewhere none are found)."""
    children = process_tree() if tree is None else tree
    found: List[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def signal_tree(pid: int, signum: int) -> None:
    """Signal every descendant of ``pid`` (also those that left its group), then the process
    group ``pid`` leads: last, as the caller may be in that group itself. ``pid`` itself, if it
    does not lead its own group (yet: a child just forked sets it a moment later), is signalled
    on its own, or the group's signal would miss it. Not a process (0, or below): nothing is
    signalled (every process descends from 0, and killpg(0) is our own group)."""
    if pid <= 0:
        return
    for target in descendants(pid):
        try:
            os.kill(target, signum)
        except OSError:
            pass
    try:
        if pid != os.getpid() and os.getpgid(pid) != pid:
            os.kill(pid, signum)
    except OSError:
        pass
    try:
        os.killpg(pid, signum)
    except OSError:
        pass


def watch_parent(parent_pid: int) -> None:
    """A worker whose kernel is gone (even by SIGKILL) takes its process group and every
    descendant (also those that left the group) down with it."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    try:
        signal_tree(os.getpid(), signal.SIGKILL)  # the worker leads its own session and group
    finally:  # whatever happened above, the worker and its group go
        os.killpg(os.getpgid(0), signal.SIGKILL)


def process_start(pid: int) -> Optional[int]:
    """When process ``pid`` started (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def alive(pid: int, start: Optional[int]) -> bool:
    return pid > 0 and start is not None and process_start(pid) == start


def exit_text(status: Optional[int]) -> str:
    """How a process ended (a wait status), in words."""
    if status is None:
        return "an unknown status (its supervisor was killed too)"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"signal {number} ({signal.Signals(number).name})"
        except ValueError:
            return f"signal {number}"
    return f"exit code {os.WEXITSTATUS(status)}"


def become_subreaper() -> bool:
    """Orphans below this process come to it, not to init; False where that cannot be (not Linux)."""
    try:
        import ctypes

        return int(ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001 - not Linux: leftovers of a stopped job may outlive it
        return False


def end_leftovers(grace: float = 2.0) -> None:
    """A stopped job's processes that outlived it (they came to us, the subreaper): TERM, then KILL."""
    deadline = time.monotonic() + grace
    sent = 0
    while True:
        while True:  # collect the ones that ended
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        left = descendants(os.getpid())
        if not left:
            return
        if time.monotonic() > deadline + 5:
            return  # unkillable (stuck in the kernel): nothing more to do
        signum = signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL
        if signum != sent or signum == signal.SIGKILL:
            for pid in left:
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass
            sent = signum
        time.sleep(0.05)


def close_all_but(*keep: int) -> None:
    """Close every inherited descriptor above 2 (the server's channel above all) but ``keep``."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)
