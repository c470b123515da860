"""The per-user local registry of remote jobs and sessions: what a new kernel needs to find jobs
and sessions left on hosts (``localhost`` too).

One small private file per remote job, ``$JUPYTER_RJOBS_STATE/jobs/<instance>.json`` (default
``~/.local/state/jupyter_rjobs``), written when the job starts, updated when it ends, deleted
with its spool. One file each, so kernels never write the same file at once. Sessions likewise,
in ``sessions/<instance>.json`` (its host and name: ``%rjob connect NAME`` in a new kernel finds it).

A job's writes are not on its way to the host: a thread writes them behind it, at once for a
detached or remote-cache job, and for any other once it has run for a second, so a quick job
costs no file at all.
Reading the registry (and the end of the process) waits for what is still to be written. The
host's spool, not this registry, is what a job's survival rests on: ``%rjob connect HOST``
finds every job there.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["LeftJob", "LeftSession", "registry_dir", "remember", "remember_new", "forget", "flush", "left_jobs", "forget_missing",
           "remember_session", "forget_session", "left_sessions"]


class LeftJob(NamedTuple):
    """A remote job this user started from some kernel, as the registry last knew it."""

    instance: str
    host: str
    name: str
    state: str
    command: str
    started: float
    kernel_pid: int
    detached: bool
    session: str | None

    @property
    def kernel_alive(self) -> bool:
        """Whether the kernel that started it is still running (then it is not left, just elsewhere)."""
        if self.kernel_pid == os.getpid():
            return True
        try:
            os.kill(self.kernel_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @property
    def shown_state(self) -> str:
        """Its state for a table: what the registry last knew is stale once its kernel is gone
        (only the host knows; ``%rjob connect HOST`` asks it)."""
        if self.state in ("Completed", "Failed", "Stopped") or self.kernel_alive:
            return self.state
        return f"Unknown (was {self.state})"


_where: tuple[tuple[str | None, str | None, str | None], Path] | None = None  # the last answer, and what it came from


def registry_dir() -> Path:
    """``$JUPYTER_RJOBS_STATE/jobs`` (default ``$XDG_STATE_HOME/jupyter_rjobs/jobs`` or
    ``~/.local/state/jupyter_rjobs/jobs``), worked out again only when those variables change."""
    global _where
    given = (os.environ.get("JUPYTER_RJOBS_STATE"), os.environ.get("XDG_STATE_HOME"), os.environ.get("HOME"))
    if _where is None or _where[0] != given:
        base = given[0] or os.path.join(given[1] or os.path.expanduser("~/.local/state"), "jupyter_rjobs")
        _where = (given, Path(base) / "jobs")
    return _where[1]


_made: set[Path] = set()


def _private_dir(path: Path | None = None) -> Path:
    path = path or registry_dir()
    if path not in _made:  # once per process: this is on every remote job's way
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        os.chmod(path, 0o700)
        _made.add(path)
    return path


def _write_json(path: Path, entry: dict[str, Any]) -> None:
    """Write ``entry`` to ``path`` whole or not at all (a private part file, then a rename)."""
    part = path.with_suffix(f".{os.getpid()}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(entry, f)
    os.replace(part, path)


_Key = tuple[Path, str]  # the registry's directory when the write was asked for, and the job


WRITE_AFTER = 1.0  # seconds: a job that ends (and is cleaned) sooner never touches the registry


@dataclasses.dataclass
class _Write:
    """A write the thread behind the jobs owes the registry, for one job."""

    fields: dict[str, Any] | None  # what to write, or None: delete the entry
    due: float  # when it may be written
    whole: bool = False  # write it whole, never merged with the file there (it follows a delete)
    new: bool = False  # a new job's entry: no file of it exists yet (a delete before it is written needs no disk)


class _Behind:
    """Registry writes done by a thread behind the jobs, in order, coalesced per job. A new job
    that is not meant to outlive its kernel gets its entry once it has run for WRITE_AFTER
    seconds (what ends sooner needs none: ``connect HOST`` finds anything on a host anyway); a
    detached or remote-cache job's entry, updates and deletes go at once."""

    def __init__(self) -> None:
        self._pending: dict[_Key, _Write] = {}
        self._busy = False
        self._wakes_at = -math.inf  # when the thread wakes by itself (-inf: it is not waiting)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, instance: str, entry: dict[str, Any] | None, new: bool = False) -> None:
        """Ask for a write (``entry``: fields to write; None: delete). ``new``: a job just made,
        never in the registry."""
        key = (registry_dir(), instance)
        now = time.monotonic()
        with self._cond:
            old = self._pending.get(key)
            if entry is None and old is not None and old.new:  # never written: nothing to delete
                del self._pending[key]
                return
            if entry is not None and old is not None and old.fields is not None:
                old.fields = {**old.fields, **entry, "started_hint": old.fields["started_hint"]}
                write = old
            else:
                passing = entry is not None and "host" in entry and old is None and not _lasting(entry)
                due = now + WRITE_AFTER if passing else min(old.due if old is not None else now, now)
                # an entry after a delete: what is on disk is not its past
                write = _Write(entry, due, whole=entry is not None and old is not None, new=new and old is None)
                self._pending[key] = write
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rjob-registry", daemon=True)
                self._thread.start()
            if write.due < self._wakes_at:  # else it wakes in time by itself (a job per start: no wake-up each)
                self._cond.notify_all()

    def flush(self, timeout: float | None = 10.0) -> None:
        """Write everything asked so far now, and wait until it is written (at most ``timeout`` s)."""
        with self._cond:
            for write in self._pending.values():
                write.due = 0.0
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _take_due(self) -> dict[_Key, _Write]:
        """Wait for writes that are due, and take them (holding the condition's lock)."""
        while True:
            now = time.monotonic()
            due = [key for key, write in self._pending.items() if write.due <= now]
            if due:
                return {key: self._pending.pop(key) for key in due}
            self._wakes_at = min((w.due for w in self._pending.values()), default=math.inf)
            try:
                self._cond.wait(self._wakes_at - now if self._pending else None)
            finally:
                self._wakes_at = -math.inf

    def _run(self) -> None:
        while True:
            with self._cond:
                work = self._take_due()
                self._busy = True
            try:
                for (directory, instance), write in work.items():
                    if write.fields is None:
                        _delete(directory, instance)
                    else:
                        _write_entry(directory, instance, write.fields, merge=not write.whole)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def _lasting(entry: dict[str, Any]) -> bool:
    """Whether a job is meant to outlive its kernel (detached, or its records kept on the host):
    its entry is written at once."""
    return bool(entry.get("detached")) or entry.get("cache") == "remote"


_behind = _Behind()
atexit.register(_behind.flush)


def remember(instance: str, **entry: Any) -> None:
    """Write (or update) a job's entry, behind the job; a failure to write never fails the job."""
    entry["started_hint"] = time.time()
    _behind.put(instance, entry)


def remember_new(instance: str, **entry: Any) -> None:
    """Write the entry of a job just started (a new instance id: no entry of it exists yet)."""
    entry["started_hint"] = time.time()
    _behind.put(instance, entry, new=True)


def forget(instance: str) -> None:
    """Delete a job's entry (behind the job, like remember)."""
    _behind.put(instance, None)


def flush() -> None:
    """Wait for the entries still to be written."""
    _behind.flush()


def _write_entry(directory: Path, instance: str, entry: dict[str, Any], merge: bool) -> None:
    try:
        path = _private_dir(directory) / f"{instance}.json"
        old: dict[str, Any] = {}
        if merge and "host" not in entry and path.exists():  # an update: keep what the first write said
            old = json.loads(path.read_text() or "{}")
            old = old if isinstance(old, dict) else {}  # a damaged entry: rewritten whole
        started = entry.pop("started_hint")
        old.update(entry, instance=instance, kernel_pid=entry.get("kernel_pid", old.get("kernel_pid", os.getpid())))
        old.setdefault("started", started)
        _write_json(path, old)
    except (OSError, ValueError):
        pass


def _delete(directory: Path, instance: str) -> None:
    try:
        (directory / f"{instance}.json").unlink()
    except OSError:
        pass


def left_jobs() -> list[LeftJob]:
    """Every job in the registry, oldest first; an entry of the wrong shape (not written by us,
    or damaged) is left out, never a crash."""
    flush()
    found = []
    directory = registry_dir()
    if not directory.is_dir():
        return []
    for path in directory.glob("*.json"):
        try:
            entry = _entry(json.loads(path.read_text()))
        except (OSError, ValueError, RecursionError):
            continue
        if entry is not None:
            found.append(entry)
    return sorted(found, key=lambda j: j.started)


_MAX_PID = 1 << 22  # Linux's pid_max ceiling: a larger "pid" is not one


def _entry(data: Any) -> LeftJob | None:
    """The entry a registry file holds, or None if its JSON is not the shape remember() writes."""
    if not isinstance(data, dict):
        return None
    found = [data.get(key, default) for key, default in (("instance", None), ("host", None), ("name", ""), ("state", "Unknown"), ("command", ""))]
    texts = [text for text in found if isinstance(text, str)]
    if len(texts) != len(found) or not texts[0] or not texts[1]:
        return None
    started, pid, session = data.get("started", 0), data.get("kernel_pid"), data.get("session")
    if isinstance(started, bool) or not isinstance(started, (int, float)) or not 0 <= started < 1e11:
        return None
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= _MAX_PID:
        return None
    if session is not None and not isinstance(session, str):
        return None
    instance, host, name, state, command = texts
    return LeftJob(instance, host, name, state, command, float(started), pid, bool(data.get("detached")), session)


def forget_missing(host: str, present: set[str]) -> None:
    """Forget the entries of ``host`` whose job is not there any more (its spool was removed),
    left by kernels that are gone: nobody else will ever update them."""
    for job in left_jobs():
        if job.host == host and job.instance not in present and not job.kernel_alive:
            forget(job.instance)


class LeftSession(NamedTuple):
    """A session this user opened from some kernel: where it is and its name."""

    instance: str
    host: str
    name: str
    python: str | None


def _sessions_dir() -> Path:
    return registry_dir().parent / "sessions"


def remember_session(instance: str, host: str, name: str, python: str | None) -> None:
    """Write a session's entry (its host and name); a failure to write never fails the session."""
    try:
        path = _private_dir(_sessions_dir()) / f"{instance}.json"
        _write_json(path, {"instance": instance, "host": host, "name": name, "python": python})
    except OSError:
        pass


def forget_session(instance: str) -> None:
    try:
        (_sessions_dir() / f"{instance}.json").unlink()
    except OSError:
        pass


def left_sessions() -> list[LeftSession]:
    """Every session entry; one of the wrong shape is left out, never a crash."""
    found = []
    directory = _sessions_dir()
    for path in directory.glob("*.json") if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(data, dict):
            continue
        texts = [data.get(key) for key in ("instance", "host", "name")]
        python = data.get("python")
        if all(isinstance(t, str) and t for t in texts) and (python is None or isinstance(python, str)):
            found.append(LeftSession(str(texts[0]), str(texts[1]), str(texts[2]), python))
    return found
