"""The worker side of a cluster job: the Dask task that runs one job in a child process.

Dask cannot interrupt a running task, so the task hands the job to a child process of the worker:
the same agent worker process jobs use (``agent/worker.py``: ``run_one``, its output capture and
record frames), kept warm and reused. The task reads the child's record frames, keeps each in a
journal (this worker's durable copy while the job runs) and publishes it on the job's event topic
(``Worker.log_event``); the task's result holds every frame and the value, the durable copy once
it has ended. ``stop_job`` (run on the workers by ``Client.run``) ends the child's process tree.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from typing import Any, BinaryIO, Dict, List, Optional, Tuple, cast

from jupyter_rjobs.agent.proctree import signal_tree
from jupyter_rjobs.agent.protocol import FINAL_STATES, IDLE, KIND_STATE, KIND_VALUE, READY, RECORD, read_frame, write_frame

__all__ = ["run_job", "stop_job", "journal_since", "forget_job", "warm", "value_of", "outline_of", "topic_of"]

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_WORKER_CODE = "from jupyter_rjobs.agent.worker import worker_main; worker_main()"

_lock = threading.Lock()
_journals: Dict[str, List[Dict[str, Any]]] = {}  # job key -> its frames so far (while it runs here)
_running: Dict[str, "_Child"] = {}  # job key -> the child running it
_stopped: "set[str]" = set()  # keys asked to stop (also before they started here)
_idle: List["_Child"] = []
_warming: List[int] = []  # not empty while a job process is being started ahead of need
INLINE_VALUE = 64 * 1024  # a value up to this size also travels in its event: the kernel need not fetch the result


def topic_of(key: str) -> str:
    """The event topic a job's frames are published on."""
    return f"rjobs:{key}"


class _Child:
    """One agent worker process (its own process group), started with this worker's Python."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, bufsize=0, start_new_session=True, env=env, close_fds=True)
        self.pid = self.proc.pid
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdout = cast(BinaryIO, self.proc.stdout)
        self.stdin = self.proc.stdin
        frame = read_frame(self.stdout)
        if frame is None or frame[0].get("op") != READY:
            self.close()
            raise RuntimeError(f"the job process did not start on this worker; check that {sys.executable} can import jupyter_rjobs")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        signal_tree(self.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def _acquire() -> _Child:
    child: Optional[_Child] = None
    with _lock:
        while _idle and child is None:
            child = _idle.pop()
            if not child.alive:
                child.close()  # reaped: no zombie left
                child = None
    if child is None:
        child = _Child()
    with _lock:
        start = not _idle and not _warming
        if start:
            _warming.append(1)
    if start:
        threading.Thread(target=warm, daemon=True, name="rjobs-warm").start()
    return child


def warm() -> int:
    """Keep one job process ready on this worker (one is started at a time); returns how many are idle."""
    try:
        with _lock:
            if _idle:
                return len(_idle)
        child = _Child()
        with _lock:
            _idle.append(child)
            return len(_idle)
    finally:
        with _lock:
            _warming.clear()


def run_job(key: str, header: Dict[str, Any], buffers: List[bytes]) -> Dict[str, Any]:
    """The task: run one job in a child process; publish its frames as they come; return them all."""
    from distributed import get_worker

    worker = get_worker()
    address = str(worker.address)
    with _lock:
        if key in _stopped:
            return {"frames": [{"seq": 1, "kind": KIND_STATE, "data": "Stopped", "time": 0.0}], "value": None, "worker": address}
        journal = _journals[key] = []
    child = _acquire()
    with _lock:
        _running[key] = child
    value: Optional[Tuple[str, List[bytes]]] = None
    clean = False
    try:
        write_frame(child.stdin, dict(header, job=0), buffers)
        value, clean = _relay(child, key, journal, worker, address, int(header.get("inline", INLINE_VALUE)))
    except OSError:
        clean = False
    finally:
        with _lock:
            _running.pop(key, None)
            _journals.pop(key, None)
            stopped = key in _stopped
            _stopped.discard(key)
    if clean:
        with _lock:
            _idle.append(child)
    else:
        code = child.proc.wait()
        child.close()
        if not journal or journal[-1]["kind"] != KIND_STATE or journal[-1]["data"] not in FINAL_STATES:
            before = len(journal)
            _ended_early(journal, address, code, stopped)
            _publish(worker, topic_of(key), journal[before:])  # the end comes at once, not with the result
    return {"frames": journal, "value": value, "worker": address}


def _relay(child: _Child, key: str, journal: List[Dict[str, Any]], worker: Any, address: str, inline: int) -> Tuple[Any, bool]:
    """Read the child's frames until it is idle again (True) or gone (False). Frames are published
    as soon as the pipe has no more, several in one event when they come together. A value of at
    most ``inline`` bytes travels in its event too (0: never, the value stays on the cluster)."""
    topic = topic_of(key)
    value = None
    batch: List[Dict[str, Any]] = []
    try:
        while True:
            frame = read_frame(child.stdout)
            if frame is None:
                return value, False
            head, bufs = frame
            if head.get("op") == IDLE:
                return value, True
            if head.get("op") != RECORD:
                continue
            record = {"seq": head["seq"], "kind": head["kind"], "data": head.get("data"), "time": head.get("time") or 0.0}
            if record["kind"] == KIND_STATE and record["data"] == "Running":
                record["worker"] = address
            if record["kind"] == KIND_VALUE:
                value = (head["data"]["format"], [bytes(b) for b in bufs])
                if sum(len(b) for b in value[1]) <= inline:
                    record["data"] = {"format": value[0], "inline": value[1]}
            with _lock:
                journal.append(record)
            batch.append(record)
            if not select.select([child.stdout], [], [], 0)[0]:
                _publish(worker, topic, batch)
                batch = []
    finally:
        _publish(worker, topic, batch)


def _publish(worker: Any, topic: str, frames: List[Dict[str, Any]]) -> None:
    if not frames:
        return
    try:
        worker.log_event(topic, frames)
    except TypeError:
        pass  # not msgpack-able: the kernel gets them from the journal or the result


def _ended_early(journal: List[Dict[str, Any]], address: str, code: int, stopped: bool) -> None:
    """The child ended without a final state: stopped, or it died (the job fails saying how)."""
    seq = journal[-1]["seq"] if journal else 0
    if not stopped:
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        evalue = f"the job's process on worker {address} exited with {how}"
        seq += 1
        journal.append({"seq": seq, "kind": "error", "time": 0.0,
                        "data": {"ename": "WorkerDied", "evalue": evalue, "traceback": [f"WorkerDied: {evalue}"]}})
    journal.append({"seq": seq + 1, "kind": KIND_STATE, "data": "Stopped" if stopped else "Failed", "time": 0.0})


def stop_job(key: str, hard: bool = False) -> bool:
    """Stop job ``key`` here: end its child's process tree (SIGTERM, or SIGKILL if ``hard``); one
    not started yet never starts. Returns whether it was running on this worker."""
    with _lock:
        _stopped.add(key)
        child = _running.get(key)
    if child is None:
        return False
    signal_tree(child.pid, signal.SIGKILL if hard else signal.SIGTERM)
    return True


def forget_job(key: str) -> None:
    """Drop what this worker remembers of ``key`` (a stop mark for a job that never ran here)."""
    with _lock:
        _stopped.discard(key)


def journal_since(key: str, after: int) -> Optional[List[Dict[str, Any]]]:
    """The frames of running job ``key`` numbered above ``after``; None if it does not run here."""
    with _lock:
        journal = _journals.get(key)
        return None if journal is None else [r for r in journal if r["seq"] > after]


def value_of(result: Dict[str, Any]) -> Any:
    """A job's value (format and buffers) from its task's result: what ``--cache remote`` keeps."""
    return result["value"]


def outline_of(result: Dict[str, Any]) -> Dict[str, Any]:
    """A job's task result without its value (the value of a ``--cache remote`` job stays on the cluster)."""
    return {"frames": result["frames"], "value": None, "worker": result["worker"], "remote_value": result["value"] is not None}
