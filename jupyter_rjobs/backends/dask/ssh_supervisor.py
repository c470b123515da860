"""The host side of a cluster started over SSH: one supervisor per Dask process (stdlib only,
Python 3.9 syntax; its source is sent as ``python -c`` and never imports jupyter_rjobs there).

``main(spec)`` with ``spec["mode"]``:

- ``"run"``: start ``spec["argv"]`` (a ``dask scheduler`` or ``dask worker``) in a session of its
  own, print one JSON line ``{"pid", "start"}`` (and, for a scheduler, ``{"address", "dashboard"}``
  once its scheduler file is written), then read commands on stdin. ``stop`` ends the process tree
  (SIGTERM, SIGKILL after the grace period) and exits 0. End of stdin (the SSH channel closed: the
  kernel closed it, died, or lost the connection) ends the tree too, unless ``spec["detached"]``:
  then the supervisor leaves and the Dask process lives on (its output goes to ``spec["log"]``).
  Should the Dask process end by itself, the supervisor ends what it left and exits with its status.
- ``"kill"``: end the tree of ``spec["pid"]`` if that pid still is the process started at
  ``spec["start"]`` (a detached cluster closed from a new connection); prints ``{"killed": bool}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional


def _stat(pid: int) -> Optional[List[bytes]]:
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def _start(pid: int) -> Optional[int]:
    fields = _stat(pid)
    return None if fields is None or fields[0] in (b"Z", b"X") else int(fields[19])


def _tree(root: int) -> List[int]:
    """``root`` and every process below it, plus the members of its process group."""
    children: Dict[int, List[int]] = {}
    group: List[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
                if int(fields[2]) == root:
                    group.append(int(entry))
    found, stack = [root], [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return [pid for pid in dict.fromkeys(found + group) if pid != os.getpid()]


def end_tree(root: int, grace: float) -> None:
    """SIGTERM the tree of ``root`` (a session leader), SIGKILL what is left after ``grace`` s,
    and wait until none of it runs (new children met on the way are taken too)."""
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        pids = [pid for pid in _tree(root) if _alive(pid)]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(0.05)
        if time.monotonic() >= deadline:
            sig = signal.SIGKILL


def _die_with_parent() -> None:
    """In the Dask process, before exec: SIGTERM it when the supervisor dies (Linux)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _say(message: Dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
    except OSError:  # the channel is gone: nobody listens any more
        pass


def _scheduler_file(path: str, process: subprocess.Popen[bytes], timeout: float,
                    stop: threading.Event) -> Optional[Dict[str, Any]]:
    """The scheduler's file once written (its address and services), or None if it died or was
    asked to stop first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and not stop.is_set() and time.monotonic() < deadline:
        try:
            with open(path) as f:
                info: Dict[str, Any] = json.load(f)
            os.remove(path)
            return info
        except (OSError, ValueError):
            time.sleep(0.05)
    return None


def _read_commands(stop: threading.Event, gone: List[bool]) -> None:
    """Read stdin until ``stop`` (then set ``stop``) or its end (the channel closed: also sets
    ``gone``)."""
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    else:
        gone.append(True)
    stop.set()


def _spawn(spec: Dict[str, Any], scratch: str) -> subprocess.Popen[bytes]:
    argv = list(spec["argv"])
    if spec.get("scheduler"):
        argv += ["--scheduler-file", os.path.join(scratch, "scheduler.json")]
        address = os.environ.get("SSH_CONNECTION", "").split()
        argv += ["--host", address[2] if len(address) == 4 else spec["fallback_host"]]
    if spec.get("detached"):
        log = os.path.expanduser(spec["log"])
        os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        preexec = None
    else:
        out, preexec = 2, _die_with_parent
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                preexec_fn=preexec, close_fds=True)
    finally:
        if out != 2:
            os.close(out)


def _forget_log(spec: Dict[str, Any]) -> None:
    """Remove a detached process's log once the process is gone."""
    if spec.get("log"):
        try:
            os.remove(os.path.expanduser(spec["log"]))
        except OSError:
            pass


def _remove(scratch: str) -> None:
    for name in os.listdir(scratch):
        os.remove(os.path.join(scratch, name))
    os.rmdir(scratch)


def _run(spec: Dict[str, Any]) -> None:
    grace = float(spec.get("grace", 5))
    stop, stopping = threading.Event(), threading.Event()
    gone: List[bool] = []
    threading.Thread(target=_read_commands, args=(stop, gone), daemon=True).start()
    scratch = tempfile.mkdtemp(prefix="rjobs-dask-")  # private (0700): the scheduler's file, removed once read
    try:
        process = _spawn(spec, scratch)
        _say({"pid": process.pid, "start": _start(process.pid)})

        def watch() -> None:  # the Dask process ended by itself: end what it left, say so, leave
            status = process.wait()
            if not stopping.is_set():
                end_tree(process.pid, grace)
                _say({"exited": status})
                os._exit(status if status > 0 else 1)

        threading.Thread(target=watch, daemon=True).start()
        if spec.get("scheduler"):
            info = _scheduler_file(os.path.join(scratch, "scheduler.json"), process, float(spec.get("timeout", 60)), stop)
            if info is not None:
                _say({"address": info.get("address"), "dashboard": (info.get("services") or {}).get("dashboard")})
    finally:
        _remove(scratch)
    stop.wait()
    if gone and spec.get("detached"):
        return  # the channel is gone and the process outlives it
    stopping.set()
    end_tree(process.pid, grace)
    process.wait()
    _forget_log(spec)
    _say({"stopped": True})


def main(spec: Dict[str, Any]) -> None:
    if spec["mode"] == "kill":
        pid = int(spec["pid"])
        match = _start(pid) == spec.get("start")
        if match:
            end_tree(pid, float(spec.get("grace", 5)))
        _forget_log(spec)
        _say({"killed": match})
        return
    _run(spec)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
