"""The detached pair that runs a host job: a supervisor (its own session) and below it the job
process. The supervisor passes stop requests on to the job's process tree and, when the job
ends without saying how (a signal, a stop), writes its end into the spool, so a spool always
ends saying how, with or without a server or a connection."""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, List, Optional

from .capture import capture_process_output
from .execute import run_one
from .proctree import become_subreaper, close_all_but, end_leftovers, exit_text, signal_tree
from .protocol import read_frame, write_frame
from .session import serve_session
from .spool import NO_SPACE_EXIT, SPOOL_WRITE_EXIT, SpoolWriter, end_records, ended_records, read_text, write_private


class Spare:
    """A detached pair forked ahead of time: a supervisor (its own session) and below it the
    process that will run the one job (or, for a session, every request) handed to it. The
    supervisor stays out of the job's process group, so stopping the job leaves it to write
    how the job ended."""

    def __init__(self, session_dir: Optional[str] = None) -> None:
        control_r, control_w = os.pipe()  # the job, to the job process
        spool_r, spool_w = os.pipe()  # where its spool is, to the supervisor
        notify_r, notify_w = os.pipe()  # a byte per record written, to the server
        os.set_blocking(notify_w, False)
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 2)  # never the server's stderr, the SSH channel: it would outlive the server
                close_all_but(control_r, spool_r, notify_w)
                supervise(control_r, spool_r, notify_w, session_dir)
            finally:
                os._exit(0)
        for fd in (control_r, spool_r, notify_w):
            os.close(fd)
        self.pid = pid
        self.notify_fd = notify_r
        self.control = os.fdopen(control_w, "wb", buffering=0)
        self.spool_pipe = spool_w

    def hand(self, spool: str, header: Dict[str, Any], buffers: List[bytearray]) -> None:
        """Give the job process its job, and the supervisor the job's spool."""
        write_frame(self.control, dict(header, spool=spool), buffers)
        self.control.close()
        os.write(self.spool_pipe, spool.encode())
        os.close(self.spool_pipe)

    def discard(self) -> None:
        """Close the server's ends (a session's pair reads its requests from its queue)."""
        self.control.close()
        os.close(self.spool_pipe)
        os.close(self.notify_fd)


def supervise(control_r: int, spool_r: int, notify_w: int, session_dir: Optional[str]) -> None:
    """The supervisor: starts the job process, passes stop requests on to its process tree, and
    when it ends, writes its end into the spool if it could not."""
    stopping = [False]
    child = [0]

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT:  # a session: interrupt the request it runs
            os.kill(child[0], signal.SIGINT)
            return
        stopping[0] = True
        signal_tree(child[0], signal.SIGKILL if signum == signal.SIGUSR1 else signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    become_subreaper()  # what the job leaves behind is still ours to stop
    child[0] = os.fork()
    if child[0] == 0:
        try:
            _job_process(control_r, spool_r, notify_w, session_dir)
        finally:
            os._exit(0)
    os.close(control_r)
    spool = b""
    while True:
        chunk = os.read(spool_r, 4096)
        if not chunk:
            break
        spool += chunk
    while True:
        try:
            _, status = os.waitpid(child[0], 0)
            break
        except ChildProcessError:
            return
    if stopping[0]:
        end_leftovers()
    _write_end(spool.decode(), status, stopping[0], notify_w, session_dir)


def _job_process(control_r: int, spool_r: int, notify_w: int, session_dir: Optional[str]) -> None:
    """The job process: runs the one job handed to it, or a session's requests."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    os.setpgid(0, 0)  # its own group: stopping its tree leaves the supervisor
    os.close(spool_r)
    fds = capture_process_output()
    if session_dir is not None:
        serve_session(session_dir, fds)
        return
    frame = read_frame(os.fdopen(control_r, "rb"))
    if frame is not None:  # None: the server ended before it had a job for us
        header, buffers = frame
        out = SpoolWriter(os.path.join(header["spool"], "records"), notify_w)
        try:
            run_one(header, buffers, out, fds)  # type: ignore[arg-type]
        except OSError:
            if out.failure is None:
                raise
        if out.failure is not None:  # a full disk: its supervisor writes how it ended (or the server says it)
            os._exit(out.exit_status())


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
            os.write(notify_w, b"\0")
        except OSError:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) in (NO_SPACE_EXIT, SPOOL_WRITE_EXIT):
                os._exit(os.WEXITSTATUS(status))  # no room for its end either: the server says it, from this status
