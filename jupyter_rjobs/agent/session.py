"""Sessions on a host: lasting interpreters. A session's directory ROOT/sessions/<uuid>/ holds
meta.json, pid (its supervisor), requests/ (the queue of jobs to run, one frame a file, oldest
name first), wake (a fifo poked when a request is queued), current (the spool of the request
it runs), broken (why its interpreter is gone) and closing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import types
import uuid
from typing import Any, Dict, List

from .capture import FdCapture
from .execute import JobStopRequested, run_one
from .proctree import alive, process_start
from .protocol import KIND_STATE, read_frame, write_frame
from .spool import SpoolWriter, check_private, end_records, ended_records, read_json, read_text, write_private


def session_dir(sessions_dir: str, session: str) -> str:
    """A session's directory (its id is a UUID, never a path)."""
    return os.path.join(sessions_dir, str(uuid.UUID(session)))


def make_session_dir(path: str, header: Dict[str, Any]) -> None:
    """A new session's directory, queue, wake-up fifo and meta.json."""
    os.mkdir(path, 0o700)
    os.mkdir(os.path.join(path, "requests"), 0o700)
    os.mkfifo(os.path.join(path, "wake"), 0o600)
    meta = {"session": str(header["session"]), "name": header.get("name"), "created": time.time(), "kernel": header.get("kernel"), "host": header.get("host")}
    write_private(os.path.join(path, "meta.json"), json.dumps(meta).encode())


def record_pid(path: str, pid: int) -> None:
    """Write which process (pid and start time) supervises a job or a session."""
    write_private(os.path.join(path, "pid"), json.dumps({"pid": pid, "start": process_start(pid)}).encode())


def session_status(path: str, session: str) -> Dict[str, Any]:
    """A session's meta and state: Opened, Broken (and why) or Gone; what it is busy with."""
    meta = read_json(os.path.join(path, "meta.json"))
    if meta is None:
        return {"session": session, "state": "Gone", "reason": "the session is gone on this host"}
    check_private(path)
    sup = read_json(os.path.join(path, "pid")) or {}
    broken = read_text(os.path.join(path, "broken"))
    is_alive = alive(int(sup.get("pid", 0)), sup.get("start"))
    state = "Opened" if is_alive and not broken else "Broken"
    reason = broken or ("" if is_alive else "its interpreter is gone")
    return dict(meta, state=state, reason=reason, busy=read_text(os.path.join(path, "current")))


def list_sessions(sessions_dir: str) -> List[Dict[str, Any]]:
    """Every session of this user on this host."""
    return [session_status(session_dir(sessions_dir, entry), entry) for entry in sorted(os.listdir(sessions_dir))]


def queue_request(path: str, name: str, header: Dict[str, Any], buffers: List[bytearray]) -> None:
    """Put a job in a session's queue (atomically: a .part file renamed) and wake the session."""
    request = os.path.join(path, "requests", name)
    writer = SpoolWriter(request + ".part", -1)
    try:
        write_frame(writer, header, buffers)
    finally:
        writer.close()
    os.replace(request + ".part", request)
    _poke(os.path.join(path, "wake"))


def unqueue(path: str, instance: str, records: str) -> bool:
    """Take a session job that has not begun out of the session's queue (it ends Stopped)."""
    requests = os.path.join(path, "requests")
    for name in os.listdir(requests):
        if name.endswith(instance):
            try:
                os.unlink(os.path.join(requests, name))
            except FileNotFoundError:
                return False  # the session took it just now
            end_records(records, [(KIND_STATE, "Stopped")], instance)
            return True
    return False


def close_session(path: str) -> None:
    """End a session's interpreter (its supervisor stops what it runs) and remove its directory."""
    sup = read_json(os.path.join(path, "pid")) or {}
    if alive(int(sup.get("pid", 0)), sup.get("start")):
        write_private(os.path.join(path, "closing"), b"1")
        try:
            os.kill(int(sup["pid"]), signal.SIGTERM)
        except ProcessLookupError:
            pass  # it ended meanwhile
    shutil.rmtree(path, ignore_errors=True)


def _poke(fifo: str) -> None:
    """Wake a session's interpreter (it may be busy: then it looks when it is done)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # nobody reads it: the session is gone
    try:
        os.write(fd, b"\0")
    except OSError:
        pass  # full: a wake-up is already waiting
    finally:
        os.close(fd)


def serve_session(path: str, fds: FdCapture) -> None:
    """A session's interpreter: runs the requests put in its queue, one after another, all in
    the same ``__main__``, so variables live from one to the next."""
    running = [False]

    def interrupt(_signum: int, _frame: Any) -> None:
        if running[0]:
            raise JobStopRequested()

    signal.signal(signal.SIGINT, interrupt)
    module = types.ModuleType("__main__")
    wake = os.open(os.path.join(path, "wake"), os.O_RDWR)  # RDWR: never an end of file
    requests = os.path.join(path, "requests")
    current = os.path.join(path, "current")
    while True:
        names = sorted(n for n in os.listdir(requests) if not n.endswith(".part"))
        if not names:
            os.read(wake, 4096)
            continue
        request = os.path.join(requests, names[0])
        try:
            with open(request, "rb") as f:
                frame = read_frame(f)
            os.unlink(request)
        except OSError:
            continue  # stopped before it began
        if frame is None:
            continue
        header, buffers = frame
        write_private(current, header["spool"].encode())
        out = SpoolWriter(os.path.join(header["spool"], "records"), -1)
        try:
            running[0] = True
            run_one(header, buffers, out, fds, module)  # type: ignore[arg-type]
        except JobStopRequested:
            pass  # it came between the job's end and here
        except OSError:
            if out.failure is None:
                raise
        finally:
            running[0] = False
            out.close()
            if out.failure is not None:  # a full disk: this request fails saying so, the session lives on if it can
                _end_unwritten(header["spool"], header["job"], out.exit_status())
            os.unlink(current)


def _end_unwritten(spool: str, instance: str, status: int) -> None:
    """End a request whose spool could not be written; if even that fails, the interpreter exits
    with ``status`` and its supervisor (or the server) says why."""
    try:
        end_records(os.path.join(spool, "records"), ended_records(status << 8, False, "the session's interpreter", spool), instance)
    except OSError:
        os._exit(status)

