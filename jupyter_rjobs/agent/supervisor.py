"""The detached pair that runs host jobs: a supervisor (its own session) and below it the job
process. The supervisor passes stop requests on to the job's process tree and, when the job
ends without saying how (a signal, a stop), writes its end into the spool, so a spool always
ends saying how, with or without a server or a connection.

A pair is warm: forked ahead of time, it runs one job after another while its server hands it
more (``hand(..., last=False)``), saying READY on its notify pipe after each. A detached job's
pair is its own from then on (``last=True``): no job follows it there, and the pair ends with
it. When the server goes (a dropped connection, a killed kernel), every pair finishes the job it
runs, then ends: a job never depends on its server to go on. A job process that a job left
with threads running, or holding over RETIRE_RESIDENT of memory, takes no further job.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import signal
import struct
from typing import Any, Dict, List, Optional

from .capture import capture_process_output
from .execute import run_one
from .proctree import become_subreaper, close_all_but, end_leftovers, exit_text, process_start, signal_tree
from .protocol import read_frame, write_frame
from .session import serve_session
from .spool import NO_SPACE_EXIT, READY, RECORDS, SPOOL_WRITE_EXIT, SpoolWriter, end_records, ended_records, read_text, write_private

RETIRE_RESIDENT = 512 * 2**20  # a job process that holds more after a job ends instead of taking another
_CURRENT = struct.Struct("I")  # the shared page: the length of the current job's spool path, then the path


class Spare:
    """A detached pair forked ahead of time: a supervisor (its own session) and below it the
    process that runs the jobs handed to it (or, for a session, every request). The supervisor
    stays out of the job's process group, so stopping the job leaves it to write how the job
    ended."""

    def __init__(self, session_dir: Optional[str] = None) -> None:
        control_r, control_w = os.pipe()  # jobs, to the job process
        notify_r, notify_w = os.pipe()  # a byte per record written (and READY), to the server
        os.set_blocking(notify_w, False)
        # the spool of the job handed last, for the supervisor once its job process has ended:
        # a page shared with it (read only then: no wake-up, no system call for each job)
        self.current = mmap.mmap(-1, mmap.PAGESIZE)
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 2)  # never the server's stderr, the SSH channel: it would outlive the server
                close_all_but(control_r, notify_w)
                supervise(control_r, self.current, notify_w, session_dir)
            finally:
                os._exit(0)
        for fd in (control_r, notify_w):
            os.close(fd)
        self.pid = pid
        self.start = process_start(pid)
        self.notify_fd = notify_r
        self.control: Optional[Any] = os.fdopen(control_w, "wb", buffering=0)
        self.job: Any = None  # the server's host job it runs now; None while it waits for one
        self.ready = True  # it has no job, or said READY after its last one

    def pid_json(self) -> bytes:
        """What a spool's pid file says of the pair that runs its job."""
        return json.dumps({"pid": self.pid, "start": self.start}).encode()

    @property
    def open(self) -> bool:
        """Whether it takes more jobs."""
        return self.control is not None

    def hand(self, spool: str, header: Dict[str, Any], buffers: List[bytearray], last: bool = True) -> None:
        """Give the job process a job, and the supervisor its spool; ``last``: the pair ends after it."""
        assert self.control is not None, "a pair that was let go runs no more jobs"
        self.ready = False
        _set_current(self.current, spool)  # first: the supervisor must know it before the job can die
        write_frame(self.control, dict(header, spool=spool), buffers)
        if last:
            self.let_go()

    def let_go(self) -> None:
        """No more jobs: the pair ends once the job it runs (if any) has ended."""
        if self.control is not None:
            self.control.close()
            self.control = None

    def discard(self) -> None:
        """Close every end the server has (a session's pair reads its requests from its queue)."""
        self.let_go()
        if self.notify_fd >= 0:
            os.close(self.notify_fd)
            self.notify_fd = -1


def supervise(control_r: int, current: mmap.mmap, notify_w: int, session_dir: Optional[str]) -> None:
    """The supervisor: starts the job process, passes stop requests on to its process tree, and
    when it ends, writes the end of the job it ran last into that job's spool if it could not."""
    stopping = [False]
    child = [0]

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT:  # a session: interrupt the request it runs
            if child[0] > 0:
                os.kill(child[0], signal.SIGINT)
            return
        stopping[0] = True
        if child[0] > 0:  # else it is stopped as soon as it is forked (a close right after an open)
            signal_tree(child[0], signal.SIGKILL if signum == signal.SIGUSR1 else signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()  # the job process's end (SIGCHLD) wakes the wait for the next spool
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, _ignore)
    become_subreaper()  # what the job leaves behind is still ours to stop
    stops = {signal.SIGTERM, signal.SIGUSR1, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # a stop during the fork waits for the handler that fits
    child[0] = os.fork()
    if child[0] == 0:
        try:
            for signum in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(signum, signal.SIG_DFL)  # never the supervisor's handler, not even for a moment
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            _job_process(control_r, notify_w, session_dir)
        finally:
            os._exit(0)
    try:
        os.setpgid(child[0], child[0])  # its group is there before any stop is passed on (it sets it too)
    except OSError:
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    os.close(control_r)
    if stopping[0]:  # stopped before the job process was there to stop
        signal_tree(child[0], signal.SIGTERM)
    status = _follow(child[0], wake_r)
    spool = _get_current(current)
    if stopping[0]:
        end_leftovers()
    _write_end(spool, status, stopping[0], notify_w, session_dir)


def _ignore(_signum: int, _frame: Any) -> None:
    """SIGCHLD's handler: its wake-up byte is what counts."""


def _follow(child: int, wake_r: int) -> int:
    """Wait for the job process to end (SIGCHLD wakes us; so does a stop, passed on by the
    handler): its wait status."""
    while True:
        try:
            pid, status = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid:
            return status
        select.select([wake_r], [], [])
        try:
            os.read(wake_r, 4096)
        except BlockingIOError:
            pass


def _set_current(page: mmap.mmap, spool: str) -> None:
    data = spool.encode()
    page[_CURRENT.size : _CURRENT.size + len(data)] = data
    page[: _CURRENT.size] = _CURRENT.pack(len(data))  # its length last: a path is never read half-written


def _get_current(page: mmap.mmap) -> str:
    """The spool of the job handed last ("" if none was)."""
    size = _CURRENT.unpack(page[: _CURRENT.size])[0]
    return page[_CURRENT.size : _CURRENT.size + size].decode() if 0 < size <= len(page) - _CURRENT.size else ""


def _job_process(control_r: int, notify_w: int, session_dir: Optional[str]) -> None:
    """The job process: runs each job handed to it until there are no more (or one leaves
    threads running, which only this process's end ends), or a session's requests."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    os.setpgid(0, 0)  # its own group: stopping its tree leaves the supervisor
    fds = capture_process_output()
    if session_dir is not None:
        serve_session(session_dir, fds)
        return
    control = os.fdopen(control_r, "rb")
    while True:
        frame = read_frame(control)
        if frame is None:  # no more jobs: the server let go of this pair, or is gone
            return
        header, buffers = frame
        out = SpoolWriter(os.path.join(header["spool"], "records"), notify_w)
        try:
            clean = run_one(header, buffers, out, fds)  # type: ignore[arg-type]
        except OSError:
            if out.failure is None:
                raise
        if out.failure is not None:  # a full disk: its supervisor writes how it ended (or the server says it)
            os._exit(out.exit_status())
        out.close()
        if not clean or _resident() > RETIRE_RESIDENT:
            out.settle()
            return  # it left threads running (they end with this process), or holds much memory
        out.settle(READY)  # its last records and READY: one wake-up of the server


def _write_end(spool: str, status: int, stopping: bool, notify_w: int, session_dir: Optional[str]) -> None:
    """After the job process ended: mark a session broken (unless it was closed), and make sure
    the spool of the job it ran says how that job ended."""
    if session_dir is not None:
        closing = os.path.exists(os.path.join(session_dir, "closing"))
        if not closing:
            reason = f"its interpreter exited with {exit_text(status)}; its variables are gone"
            try:
                write_private(os.path.join(session_dir, "broken"), reason.encode())
            except OSError:
                pass
        current = read_text(os.path.join(session_dir, "current"))
        if current:
            spool = current
            stopping = stopping or closing
    if spool:
        path = os.path.join(spool, "records")
        what = "the session's interpreter" if session_dir else "worker"
        try:
            end_records(path, ended_records(status, stopping, what, spool), os.path.basename(spool))
            os.write(notify_w, RECORDS)
        except OSError:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) in (NO_SPACE_EXIT, SPOOL_WRITE_EXIT):
                os._exit(os.WEXITSTATUS(status))  # no room for its end either: the server says it, from this status


def _resident() -> int:
    """This process's resident memory in bytes (0 where /proc does not say)."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            return int(os.read(fd, 256).split()[1]) * os.sysconf("SC_PAGE_SIZE")
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return 0
