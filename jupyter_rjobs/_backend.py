"""The one interface every kind of job runs behind.

A :class:`Backend` checks and packs a job before it exists (``prepare``: a syntax error or
an unsendable variable is raised there, so nothing is half-created) and runs it
(``launch``), returning a :class:`JobRunner`. Like ``subprocess.Popen`` and
jupyter_client's kernel provisioners, a runner is asked to ``terminate()`` (politely) and
then ``kill()``; it reports what the job produces by appending records to ``job.stream``
and moving ``job`` through its states.
"""

from __future__ import annotations

import abc
import sys
import time
from typing import Any, Mapping, Sequence

from .agent.values import loads_value
from ._job import Job, JobKind, JobState
from ._records import Record, RecordKind

__all__ = ["Backend", "JobRunner", "FrameApplier"]


class JobRunner(abc.ABC):
    """Runs one job."""

    def __init__(self, job: Job) -> None:
        self.job = job
        job.runner = self

    @abc.abstractmethod
    def terminate(self) -> None:
        """Ask the job to stop (a thread: an exception raised in it; a process tree: SIGTERM)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Force the job to stop, after ``terminate`` had its grace period."""

    def cleanup(self) -> None:
        """Free what the job held once it is removed (a remote spool, say)."""


class Backend(abc.ABC):
    """Where jobs of one kind run."""

    kind: JobKind

    def __init__(self, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        self.max_concurrent = max_concurrent

    @abc.abstractmethod
    def prepare(
        self,
        code: str,
        filename: str,
        namespace: Mapping[str, Any] | None,
        push: Sequence[str] | None,
        **options: Any,
    ) -> Any:
        """Check and pack a job; raise a UsageProblem for bad input. Nothing may run yet.

        ``options`` are the backend's own (hosts, cache... for remote jobs)."""

    @abc.abstractmethod
    def launch(self, job: Job, prepared: Any) -> None:
        """Start running ``job`` (which is NotStarted); it moves to Running when it really starts.

        The runner it creates sets ``job.runner``; it may do so later (a worker still starting).
        """

    def shutdown(self) -> None:
        """Release everything (worker processes, connections). Jobs were stopped before."""


class FrameApplier:
    """Turns the agent's record frames (from a worker pipe or a remote spool) into a job's
    records and states. A value that cannot be loaded here fails the job, saying why."""

    def __init__(self, job: Job, python_version: str = "") -> None:
        self.job = job
        self.python_version = python_version
        self._value_failed = False

    def __call__(self, header: dict[str, Any], buffers: list[bytearray]) -> None:
        """Apply a frame to the job: a state change, or a record appended to its stream."""
        if header["kind"] == "state":
            state = JobState(header["data"])
            if state is JobState.Completed and self._value_failed:
                state = JobState.Failed
            self.job.set_state(state)
            return
        record = self.record(header, buffers)
        self.job.emit(record.kind, record.data, seq=record.seq, when=record.time)

    def record(self, header: dict[str, Any], buffers: list[bytearray]) -> Record:
        """The record a (non-state) frame holds, its value loaded; an unloadable value becomes an error."""
        kind, data = header["kind"], header.get("data")
        if kind == "value":
            try:
                data = loads_value(data["format"], buffers)
            except Exception as exc:  # noqa: BLE001 - a class the kernel lacks, a Python version mismatch
                self._value_failed = True
                kind, data = "error", self._unloadable(exc)
        return Record(header["seq"], RecordKind(kind), data, header.get("time") or time.time(), self.job.id)

    def _unloadable(self, exc: Exception) -> dict[str, Any]:
        local = sys.version.split()[0]
        versions = ""
        if self.python_version and self.python_version.rsplit(".", 1)[0] != local.rsplit(".", 1)[0]:
            versions = f"; the job ran on Python {self.python_version}, this kernel is Python {local}"
        evalue = f"the job's value arrived but cannot be loaded here ({type(exc).__name__}: {exc}){versions}"
        return {"ename": "ValueNotLoadable", "evalue": evalue, "traceback": [f"ValueNotLoadable: {evalue}"]}
