"""The job object: PowerShell's job properties on a ``concurrent.futures.Future``."""

from __future__ import annotations

import enum
import os
import random
import threading
import uuid
from concurrent.futures import Future, InvalidStateError
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from jupyter_rjobs.core.errors import JobError, JobStoppedError
from jupyter_rjobs.core.records import Record, RecordKind, RecordStream

if TYPE_CHECKING:
    from jupyter_rjobs.backends.base import JobRunner
    from jupyter_rjobs.core.sessions import Session

__all__ = ["JobState", "JobKind", "Job"]

# instance ids: random version-4 UUIDs from a generator seeded once from os.urandom (and again in
# a forked child), not a getrandom() call per job; they name spools, they guard nothing
_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


class JobState(enum.Enum):
    NotStarted = "NotStarted"
    Running = "Running"
    Completed = "Completed"
    Failed = "Failed"
    Stopping = "Stopping"
    Stopped = "Stopped"
    Blocked = "Blocked"
    Disconnected = "Disconnected"

    finished: bool  # Completed, Failed or Stopped: it never changes again (a plain attribute, set below: asked often)

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def parse(cls, text: str | JobState) -> JobState:
        if isinstance(text, JobState):
            return text
        for state in cls:
            if state.value.lower() == str(text).lower():
                return state
        names = ", ".join(s.value for s in cls)
        raise ValueError(f"unknown job state {text!r}; use one of {names}")


FINISHED_STATES = frozenset({JobState.Completed, JobState.Failed, JobState.Stopped})
for _state in JobState:
    _state.finished = _state in FINISHED_STATES
del _state


class _KindRegistry(type):
    """Iterating ``JobKind`` gives the registered kinds, in registration order."""

    def __iter__(cls) -> Iterator[JobKind]:
        return iter(list(JobKind._known.values()))


class JobKind(metaclass=_KindRegistry):
    """A kind of job: its short name (``thread``) and PowerShell type name (PSJobTypeName,
    ``ThreadJob``), which is how it prints. Kinds are open: each backend registers its own
    (``register_backend``); one instance per name, so kinds compare with ``is``."""

    _known: ClassVar[dict[str, JobKind]] = {}
    _parsed: ClassVar[dict[str, JobKind]] = {}  # what parse was given, found once (emptied when kinds change)
    THREAD: ClassVar[JobKind]
    PROCESS: ClassVar[JobKind]
    REMOTE: ClassVar[JobKind]

    def __init__(self, name: str, type_name: str) -> None:
        self.name = name
        self.type_name = type_name

    @classmethod
    def register(cls, name: str, type_name: str) -> JobKind:
        """The kind called ``name``, made on first use; registering it again with another type name is an error."""
        if not name.isidentifier() or name != name.lower():
            raise ValueError(f"a job kind's name is a lower-case identifier, not {name!r}")
        known = cls._known.get(name)
        if known is None:
            known = cls._known[name] = cls(name, type_name)
            cls._parsed.clear()
        elif known.type_name != type_name:
            raise ValueError(f"job kind {name!r} is registered already, as {known.type_name}")
        return known

    @classmethod
    def forget(cls, name: str) -> None:
        """Unregister a kind (for a backend that is removed again, as tests do)."""
        if name in ("thread", "process", "remote"):
            raise ValueError(f"the built-in job kind {name!r} cannot be removed")
        cls._known.pop(name, None)
        cls._parsed.clear()

    @property
    def value(self) -> str:
        return self.type_name

    def __str__(self) -> str:
        return self.type_name

    def __repr__(self) -> str:
        return f"<JobKind {self.name} ({self.type_name})>"

    @classmethod
    def parse(cls, text: str | JobKind) -> JobKind:
        """A kind from its name or type name, any case."""
        if isinstance(text, JobKind):
            return text
        found = cls._parsed.get(text) if isinstance(text, str) else None
        if found is not None:
            return found
        wanted = str(text).lower()
        for kind in cls._known.values():
            if wanted in (kind.name, kind.type_name.lower()):
                if isinstance(text, str):
                    cls._parsed[text] = kind
                return kind
        names = ", ".join(cls._known)
        raise ValueError(f"unknown job kind {text!r}; use one of {names}")


JobKind.THREAD = JobKind.register("thread", "ThreadJob")
JobKind.PROCESS = JobKind.register("process", "BackgroundJob")
JobKind.REMOTE = JobKind.register("remote", "RemoteJob")


def aggregate_state(states: list[JobState]) -> JobState:
    """A parent job's state from its children's, by PowerShell's rules.

    Running while any child runs (or is yet to start); once none does: Disconnected if
    any child is, else Failed if any failed, else Stopped if any was stopped, else Completed.
    """
    present = set(states)
    if not present:
        return JobState.NotStarted
    if present == {JobState.NotStarted}:
        return JobState.NotStarted
    if JobState.Running in present or JobState.NotStarted in present:
        return JobState.Running
    for busy in (JobState.Stopping, JobState.Blocked):
        if busy in present:
            return busy
    for final in (JobState.Disconnected, JobState.Failed, JobState.Stopped):
        if final in present:
            return final
    return JobState.Completed


def shorten(code: str, width: int = 60) -> str:
    """The code on one line, cut to ``width`` characters, for tables."""
    lines = [line.strip() for line in code.strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("#")] or lines
    one_line = " ; ".join(lines)
    return one_line if len(one_line) <= width else one_line[: width - 3] + "..."


StateListener = Callable[["Job", JobState, JobState], None]
RecordListener = Callable[["Job", Record], None]


class Job(Future[Any]):
    """One job. A ``concurrent.futures.Future`` whose result is the value of the code's last expression.

    ``result()`` raises :class:`JobError` (with the job-side traceback) for a failed job and
    :class:`JobStoppedError` for a stopped one.
    """

    def __init__(
        self,
        id: int,
        kind: JobKind,
        code: str,
        name: str | None = None,
        location: str = "localhost",
        parent: Job | None = None,
        on_state: StateListener | None = None,
        on_record: RecordListener | None = None,
        instance_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__()
        self.id = id
        self._instance_id = instance_id
        self.name = name or f"Job{id}"
        self.kind = kind
        self.location = location
        self.code = code
        self.parent = parent
        self.children: list[Job] = []
        self.begin_time: datetime | None = None
        self.end_time: datetime | None = None
        self.error: JobError | None = None
        self.reason = ""  # why it is in its state, when that needs saying (PowerShell's JobStateInfo.Reason)
        self.detached = False  # a remote job that outlives the kernel (also: one of a disconnected session)
        self.session: Session | None = None  # the Session it runs in, if any
        self.runner: JobRunner | None = None
        self._job_state = JobState.NotStarted
        self._state_lock = threading.Lock()  # a plain lock: taking the Future's Condition is Python code
        self._value: Any = None
        self._progress: dict[str, Any] | None = None
        self._on_state = on_state
        self._on_record = on_record
        self.stream = RecordStream(id, on_append=self._record_appended)

    # -- properties -----------------------------------------------------------------
    @property
    def instance_id(self) -> uuid.UUID:
        """Unique everywhere (it names a remote job's spool); made when first asked for."""
        if self._instance_id is None:
            self._instance_id = uuid.UUID(int=_ids.getrandbits(128), version=4)
        return self._instance_id

    @property
    def command(self) -> str:
        """The code on one line, shortened for tables."""
        return shorten(self.code)

    @property
    def state(self) -> JobState:
        """The job's state; a parent's follows its children (see :func:`aggregate_state`)."""
        return self._job_state

    def leaves(self) -> list[Job]:
        """The jobs that really run: this one, or (for a parent) its children's leaves."""
        if not self.children:
            return [self]
        return [leaf for child in self.children for leaf in child.leaves()]

    @property
    def progress(self) -> dict[str, Any] | None:
        """The latest progress the job reported (``{"current", "total", "message"}``), or None."""
        return self._progress

    def peek(self, last: int | None = None) -> list[Record]:
        """The job's unreceived records held in the kernel (the last ``last``), for a look that is not a
        receive: ``receive`` still returns every one of them. A parent: its leaves' records, by time."""
        if not self.children:
            return self.stream.peek(last)
        records = sorted((r for leaf in self.leaves() for r in leaf.stream.peek(last)), key=lambda r: r.time)
        return records if last is None else records[-last:] if last > 0 else []

    @property
    def has_more_data(self) -> bool:
        if self.children:
            return any(child.has_more_data for child in self.children)
        return not self._job_state.finished or self.stream.has_unreceived

    @property
    def label(self) -> str:
        return f"job {self.id} ({self.name})" if self.name != f"Job{self.id}" else f"job {self.id}"

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.name!r} {self.kind} {self.state} at {self.location}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        from jupyter_rjobs.core.table import text_table

        printer.text(text_table([self]))

    def _repr_html_(self) -> str:
        from jupyter_rjobs.core.table import html_table

        return html_table([self])

    # -- what runners call ----------------------------------------------------------
    def _record_appended(self, record: Record) -> None:
        if record.kind is RecordKind.VALUE:
            self._value = record.data
        elif record.kind is RecordKind.ERROR and self.error is None:
            data = record.data
            self.error = JobError(data["ename"], data["evalue"], data.get("traceback", ()), data.get("original"))
        elif record.kind is RecordKind.PROGRESS:
            self._progress = record.data
        if self._on_record is not None:
            self._on_record(self, record)

    def emit(self, kind: RecordKind, data: Any, seq: int | None = None, when: float | None = None) -> None:
        self.stream.append(kind, data, seq, when)

    def use_stream(self, make: Callable[[Callable[[Record], None]], RecordStream]) -> None:
        """Keep this job's records in another stream (a backend whose records stay elsewhere until
        received): ``make(on_append)`` builds it, calling ``on_append(record)`` for each record it gets."""
        self.stream = make(self._record_appended)

    def fail(self, ename: str, evalue: str, traceback: list[str] | None = None) -> None:
        """Record an error raised outside the job's code (its worker died, say) and end as Failed."""
        if self.error is None:
            self.emit(RecordKind.ERROR, {"ename": ename, "evalue": evalue, "traceback": traceback or [f"{ename}: {evalue}"]})
        self.set_state(JobState.Failed)

    def set_state(self, new: JobState) -> bool:
        """Move to ``new``; a finished job never changes again. Returns whether it changed."""
        with self._state_lock:
            old = self._job_state
            if old is new or old.finished:
                return False
            if old is JobState.Stopping and new in (JobState.Completed, JobState.Failed):
                new = JobState.Stopped if new is JobState.Failed else new
            self._enter(new)
        if new.finished:
            self.stream.close()
            self._settle_future(new)  # before observers: one may ask for the result on this event
        if self._on_state is not None:
            self._on_state(self, old, new)
        return True

    def _enter(self, new: JobState) -> None:
        """Take state ``new`` and note when the job began and ended (the caller holds the lock)."""
        self._job_state = new
        if new is JobState.Running and self.begin_time is None:
            self.begin_time = datetime.now()
        if new.finished:
            self.end_time = datetime.now()
            if self.begin_time is None:
                self.begin_time = self.end_time

    def child_state_changed(self) -> None:
        """A child moved: tell observers if this parent's aggregate state moved, settle when all ended."""
        with self._state_lock:
            old, new = self._job_state, aggregate_state([child.state for child in self.children])
            if old is new:
                return
            self._enter(new)
            if new.finished:
                self._value = {child.location: child._value for child in self.children if child.state is JobState.Completed}
                failed = [c for c in self.children if c.state is JobState.Failed]
                if failed:
                    self.error = JobError(
                        "ChildJobFailed",
                        "; ".join(f"{c.location}: {c.error}" for c in failed),
                        [line for c in failed for line in [f"--- {c.location} ---", *(c.error.traceback if c.error else [])]],
                    )
        if new.finished:
            self._settle_future(new)
        if self._on_state is not None:
            self._on_state(self, old, new)

    def _settle_future(self, state: JobState) -> None:
        try:
            if state is JobState.Completed:
                self.set_result(self._value)
            elif state is JobState.Failed:
                self.set_exception(self.error or JobError("JobFailed", f"{self.label} failed"))
            else:
                self.set_exception(JobStoppedError(self.label))
        except InvalidStateError:
            pass  # settled already

    def cancel(self) -> bool:
        """Future API: a job that has not started yet is stopped and never runs; others are not touched."""
        if self._job_state is JobState.NotStarted:
            return self.set_state(JobState.Stopped)
        return False

    def cancelled(self) -> bool:
        return False
