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
from typing import Any, Mapping, Sequence

from ._job import Job, JobKind

__all__ = ["Backend", "JobRunner"]


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
    ) -> Any:
        """Check and pack a job; raise a UsageProblem for bad input. Nothing may run yet."""

    @abc.abstractmethod
    def launch(self, job: Job, prepared: Any) -> None:
        """Start running ``job`` (which is NotStarted); it moves to Running when it really starts.

        The runner it creates sets ``job.runner``; it may do so later (a worker still starting).
        """

    def shutdown(self) -> None:
        """Release everything (worker processes, connections). Jobs were stopped before."""
