"""The per-user local registry of remote jobs: what a new kernel needs to find jobs left on hosts.

One small private file per remote job, ``$JUPYTER_RJOBS_STATE/jobs/<instance>.json`` (default
``~/.local/state/jupyter_rjobs``), written when the job starts, updated when it ends, deleted
with its spool. One file each, so kernels never write the same file at once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["LeftJob", "registry_dir", "remember", "forget", "left_jobs"]


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


def registry_dir() -> Path:
    base = os.environ.get("JUPYTER_RJOBS_STATE") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "jupyter_rjobs"
    )
    return Path(base) / "jobs"


_made: set[Path] = set()


def _private_dir() -> Path:
    path = registry_dir()
    if path not in _made:  # once per process: this is on every remote job's way
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        os.chmod(path, 0o700)
        _made.add(path)
    return path


def remember(instance: str, **entry: Any) -> None:
    """Write (or update) a job's entry; a failure to write never fails the job."""
    try:
        path = _private_dir() / f"{instance}.json"
        old: dict[str, Any] = {}
        if "host" not in entry and path.exists():  # an update: keep what the first write said
            old = json.loads(path.read_text() or "{}")
        old.update(entry, instance=instance, kernel_pid=entry.get("kernel_pid", old.get("kernel_pid", os.getpid())))
        old.setdefault("started", time.time())
        part = path.with_suffix(f".{os.getpid()}.part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(old, f)
        os.replace(part, path)
    except (OSError, ValueError):
        pass


def forget(instance: str) -> None:
    try:
        (registry_dir() / f"{instance}.json").unlink()
    except OSError:
        pass


def left_jobs() -> list[LeftJob]:
    """Every job in the registry, oldest first."""
    found = []
    directory = registry_dir()
    if not directory.is_dir():
        return []
    for path in directory.glob("*.json"):
        try:
            data = json.loads(path.read_text())
            found.append(
                LeftJob(
                    data["instance"], data["host"], data.get("name", ""), data.get("state", "Unknown"),
                    data.get("command", ""), float(data.get("started", 0)), int(data.get("kernel_pid", 0)),
                    bool(data.get("detached")), data.get("session"),
                )
            )
        except (OSError, ValueError, KeyError):
            continue
    return sorted(found, key=lambda j: j.started)
