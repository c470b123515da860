"""Sessions (PowerShell's PSSession): a lasting Python interpreter on a host.

Every job run in a session (``invoke`` now, or ``start --session`` in the background) runs in
the same ``__main__``, so variables live from one to the next. A session runs one thing at a
time: while it does, it is Busy. It outlives a disconnect, and the kernel too.
"""

from __future__ import annotations

import enum
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jupyter_rjobs.core.job import Job

__all__ = ["Session", "SessionState", "Availability"]


class SessionState(enum.Enum):
    Opened = "Opened"
    Disconnected = "Disconnected"
    Broken = "Broken"
    Closed = "Closed"

    def __str__(self) -> str:
        return self.value


class Availability(enum.Enum):
    Available = "Available"
    Busy = "Busy"
    None_ = "None"

    def __str__(self) -> str:
        return self.value


class Session:
    """A session: its id and name here, its host, and the interpreter's id there."""

    def __init__(self, id: int, name: str | None, host: str, python: str | None, instance: uuid.UUID | None = None) -> None:
        self.id = id
        self.name = name or f"Session{id}"
        self.host = host
        self.python = python
        self.instance = instance or uuid.uuid4()
        self.state = SessionState.Opened
        self.reason = ""
        self.created = time.time()
        self.jobs: list[Job] = []  # the jobs run in it, newest last

    @property
    def busy_with(self) -> Job | None:
        """The job it is running now, or None."""
        for job in reversed(self.jobs):
            if not job.state.finished:
                return job
        return None

    @property
    def availability(self) -> Availability:
        if self.state is not SessionState.Opened:
            return Availability.None_
        return Availability.Busy if self.busy_with is not None else Availability.Available

    def set_broken(self, reason: str) -> None:
        if self.state is not SessionState.Closed:
            self.state = SessionState.Broken
            self.reason = reason

    @property
    def label(self) -> str:
        return f"session {self.name}" if self.name != f"Session{self.id}" else f"session {self.id}"

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.name!r} on {self.host} {self.state} {self.availability}>"
