"""A process job worker, pre-started by the kernel: reads RUN frames on stdin, runs each job,
writes its records on stdout, then IDLE. It dies with the kernel. Processes a job leaves running
end with the job; a job that leaves threads running ends its worker too (no IDLE: the pool starts
another), so nothing of one job runs on into the next."""

from __future__ import annotations

import os
import sys
import threading

from .capture import capture_process_output
from .execute import run_one
from .proctree import watch_parent
from .protocol import IDLE, PROTOCOL_VERSION, READY, RUN, read_frame, write_frame


def worker_main() -> None:
    """A pre-started process job worker: reads run requests on stdin, writes records on stdout."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    inp = os.fdopen(os.dup(0), "rb")
    fds = capture_process_output()
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    write_frame(out, {"op": READY, "pid": os.getpid(), "version": PROTOCOL_VERSION, "python": sys.version.split()[0]})
    while True:
        frame = read_frame(inp)
        if frame is None:
            return
        header, buffers = frame
        if header.get("op") == RUN:
            if not run_one(header, buffers, out, fds):
                os._exit(0)  # the job left threads running: they end with this worker, which the pool replaces
            write_frame(out, {"op": IDLE})


if __name__ == "__main__":
    worker_main()
