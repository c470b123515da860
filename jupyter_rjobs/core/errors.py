"""Every error jupyter_rjobs raises, in one place. Each message says what to do.

The tree::

    RJobError
    ├── UsageProblem                 bad input from the caller (the magics turn these into UsageError)
    │   ├── JobNotFoundError         no job has that id or name          (also LookupError)
    │   ├── SessionNotFoundError     no session has that id or name      (also LookupError)
    │   ├── AmbiguousJobError        a name that several jobs share
    │   ├── JobCodeError             the job's code does not compile; no job was created
    │   ├── UnsendableVariableError  a variable cannot be serialized for a process or remote job
    │   ├── JobStateError            the job is in the wrong state for that action (remove a running job)
    │   └── HostError                a host cannot be used: name, network, python, spool, disk
    │       ├── HostKeyError         the host's key is unknown (refused unless accepted) or changed (always refused)
    │       ├── AuthenticationError  the host refused every key tried
    │       └── HostRequestFailed    the agent on the host answered that it could not do a request
    ├── JobError                     the job's code raised, or its worker died; carries the job-side traceback
    └── JobStoppedError              the job was stopped (also concurrent.futures.CancelledError)
"""

from __future__ import annotations

import re
from concurrent.futures import CancelledError
from typing import Sequence

__all__ = [
    "RJobError",
    "UsageProblem",
    "JobNotFoundError",
    "AmbiguousJobError",
    "SessionNotFoundError",
    "JobCodeError",
    "UnsendableVariableError",
    "JobStateError",
    "HostError",
    "HostKeyError",
    "AuthenticationError",
    "HostRequestFailed",
    "JobError",
    "JobStoppedError",
]


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class RJobError(Exception):
    """Base of every jupyter_rjobs error."""


class UsageProblem(RJobError):
    """The caller asked for something that cannot be done as asked; nothing was changed."""


class JobNotFoundError(UsageProblem, LookupError):
    def __init__(self, spec: object) -> None:
        super().__init__(f"no job with id or name {spec!r}; see `%rjob list` for the jobs there are")
        self.spec = spec


class SessionNotFoundError(UsageProblem, LookupError):
    def __init__(self, spec: object, known: Sequence[str]) -> None:
        names = ", ".join(known) or "none yet"
        super().__init__(f"no session with id or name {spec!r} (sessions: {names}); open one with `%rjob session new HOST`")
        self.spec = spec


class AmbiguousJobError(UsageProblem, LookupError):
    def __init__(self, name: str, ids: Sequence[int]) -> None:
        id_list = ", ".join(str(i) for i in ids)
        super().__init__(f"several jobs are named {name!r} (ids {id_list}); name one by its id")
        self.name = name
        self.ids = list(ids)


class JobCodeError(UsageProblem):
    def __init__(self, error: SyntaxError) -> None:
        where = f"line {error.lineno}: " if error.lineno else ""
        super().__init__(
            f"the job's code does not compile ({where}{error.msg}); fix the cell and run it again. No job was started."
        )
        self.lineno = error.lineno
        self.msg = error.msg


class UnsendableVariableError(UsageProblem):
    def __init__(self, name: str, reason: str, where: str = "a process job") -> None:
        super().__init__(
            f"variable {name!r} cannot be sent to {where} ({reason}); choose variables with --push NAMES,"
            " send none with --no-push, or run it with --thread. No job was started."
        )
        self.name = name
        self.reason = reason


class JobStateError(UsageProblem):
    """An action that the job's state does not allow (for example removing a running job)."""


class HostError(UsageProblem):
    """A host cannot be used; the message names the host and what to do."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host


class HostRequestFailed(HostError):
    """The host's agent answered, saying why it could not do a request: nothing changed there."""


class HostKeyError(HostError):
    def __init__(self, host: str, message: str, changed: bool) -> None:
        super().__init__(host, message)
        self.changed = changed


class AuthenticationError(HostError):
    pass


class JobError(RJobError):
    """The job failed: its code raised, or the process running it died.

    ``ename`` and ``evalue`` name the job-side exception, ``traceback`` is the list of
    job-side traceback lines (rendered like IPython's), and for thread jobs ``original``
    is the exception object itself.
    """

    def __init__(
        self,
        ename: str,
        evalue: str,
        traceback: Sequence[str] = (),
        original: BaseException | None = None,
    ) -> None:
        super().__init__(f"{ename}: {evalue}" if evalue else ename)
        self.ename = ename
        self.evalue = evalue
        self.traceback = list(traceback)
        self.original = original

    @property
    def traceback_text(self) -> str:
        """The traceback as plain text (``traceback`` keeps IPython's colours)."""
        return _ANSI_ESCAPE.sub("", "\n".join(self.traceback))

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of the kernel-side traceback when the error is raised in a cell."""
        return self.traceback or [str(self)]


class JobStoppedError(RJobError, CancelledError):
    def __init__(self, job_label: str) -> None:
        super().__init__(f"{job_label} was stopped before it finished; it has no result")
