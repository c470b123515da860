"""What a JobManager tells its observers (the panel, cards, tables), and what ``wait`` returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable

from jupyter_rjobs.core.job import Job, JobState
from jupyter_rjobs.core.records import Record

__all__ = ["EventKind", "JobEvent", "WaitResult"]


class EventKind(enum.Enum):
    ADDED = "added"
    STATE = "state"
    RECORD = "record"
    REMOVED = "removed"


@dataclass(frozen=True)
class JobEvent:
    kind: EventKind
    job: Job
    old_state: JobState | None = None
    new_state: JobState | None = None
    record: Record | None = None


class WaitResult(list):  # type: ignore[type-arg]
    """The jobs that finished (a list), and ``still_running``: those that had not when ``wait`` returned."""

    def __init__(self, finished: Iterable[Job], still_running: Iterable[Job], timed_out: bool) -> None:
        super().__init__(finished)
        self.still_running: list[Job] = list(still_running)
        self.timed_out = timed_out
