"""jupyter_rjobs: PowerShell's job model for IPython and Jupyter.

Run a cell in a thread, in another process, or on SSH hosts while the notebook stays
free; list, wait for, receive, stop and remove those jobs. ``%load_ext jupyter_rjobs``
gives the ``%rjob`` magics; :class:`JobManager` is the same thing as plain Python.
"""

from __future__ import annotations

from typing import Any

from jupyter_rjobs.agent.capture import display, progress
from jupyter_rjobs.backends.base import (
    Backend,
    BackendOptions,
    JobRunner,
    option,
    register_backend,
    registered_backends,
    unregister_backend,
)
from jupyter_rjobs.backends.remote.registry import LeftJob
from jupyter_rjobs.backends.remote.ssh.config import HostSettings, resolve_host
from jupyter_rjobs.core.errors import (
    AmbiguousJobError,
    AuthenticationError,
    HostError,
    HostKeyError,
    HostRequestFailed,
    JobCodeError,
    JobError,
    JobNotFoundError,
    JobStateError,
    JobStoppedError,
    RJobError,
    SessionNotFoundError,
    UnsendableVariableError,
    UsageProblem,
)
from jupyter_rjobs.core.job import Job, JobKind, JobState
from jupyter_rjobs.core.manager import EventKind, JobEvent, JobManager, WaitResult
from jupyter_rjobs.core.records import Record, RecordKind
from jupyter_rjobs.core.sessions import Availability, Session, SessionState
from jupyter_rjobs.core.table import JobTable

__version__ = "0.1.0"

__all__ = [
    "AmbiguousJobError",
    "AuthenticationError",
    "Availability",
    "Backend",
    "BackendOptions",
    "EventKind",
    "HostError",
    "HostKeyError",
    "HostRequestFailed",
    "HostSettings",
    "Job",
    "JobCodeError",
    "JobError",
    "JobEvent",
    "JobKind",
    "JobManager",
    "JobNotFoundError",
    "JobRunner",
    "JobState",
    "JobStateError",
    "JobStoppedError",
    "JobTable",
    "LeftJob",
    "RJobError",
    "Record",
    "RecordKind",
    "Session",
    "SessionNotFoundError",
    "SessionState",
    "UnsendableVariableError",
    "UsageProblem",
    "WaitResult",
    "__version__",
    "display",
    "load_ipython_extension",
    "option",
    "panel",
    "progress",
    "register_backend",
    "registered_backends",
    "resolve_host",
    "unload_ipython_extension",
    "unregister_backend",
]


def panel(manager: JobManager | None = None, *, interval: float = 0.25, page_size: int = 50) -> Any:
    """A live ipywidgets panel of the jobs (default: the running IPython's manager); see ``%rjob panel``.

    Updates at most every ``interval`` seconds, ``page_size`` rows a page; ``.close()`` ends it.
    """
    from jupyter_rjobs.ipython.panel import panel as make_panel  # ipywidgets is imported only now

    return make_panel(manager, interval=interval, page_size=page_size)


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext jupyter_rjobs``: the %rjob magics, backed by one JobManager for the shell."""
    from jupyter_rjobs.ipython.extension import load

    load(shell)


def unload_ipython_extension(shell: Any) -> None:
    """``%unload_ext jupyter_rjobs``: stops the shell's jobs and their workers."""
    from jupyter_rjobs.ipython.extension import unload

    unload(shell)
