"""IPython integration: one JobManager per shell, display routing for thread jobs, and
rendering of received records in the cell that receives them."""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any, Iterable

from .agent.capture import current_sink, install_routing
from ._errors import _ANSI_ESCAPE
from ._job import Job
from ._manager import JobManager
from ._records import Record, RecordKind

__all__ = ["load", "unload", "get_manager", "Renderer"]

_managers: weakref.WeakKeyDictionary[Any, JobManager] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def get_manager(shell: Any = None) -> JobManager:
    """The job manager of ``shell`` (default: the running IPython), created on first use."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            raise RuntimeError("no IPython shell is running; use jupyter_rjobs.JobManager() directly")
    with _lock:
        manager = _managers.get(shell)
        if manager is None or manager.closed:
            manager = _managers[shell] = JobManager()
        return manager


def load(shell: Any) -> None:
    from ._magics import RJobMagics

    manager = get_manager(shell)
    shell.register_magics(RJobMagics(shell, manager))
    _route_display(shell)
    _unregister_callbacks(shell)  # %reload_ext: never twice
    shell.events.register("pre_run_cell", _route_before_cell)
    manager.prewarm()
    host = os.environ.get("JUPYTER_RJOBS_ENTER")
    if host:  # a kernel spec made with `jupyter rjobs install-kernel --host HOST`
        _enter_host(shell, manager, host)


def _enter_host(shell: Any, manager: JobManager, host: str) -> None:
    """Open a session on ``host`` and enter it: every cell of this kernel runs there."""
    from ._enter import enter
    from ._errors import RJobError

    try:
        session = manager.new_session(host, name=host)
    except RJobError as exc:
        print(f"jupyter_rjobs: cells run here, not on {host}: {exc}", file=sys.stderr)
        return
    enter(shell, session)
    print(f"[{session.name}@{session.host}] Cells of this kernel run in {session.label} on {session.host}; `%rjob exit` brings them back here.")


def unload(shell: Any) -> None:
    with _lock:
        manager = _managers.pop(shell, None)
    if manager is not None:
        manager.shutdown()
    _unregister_callbacks(shell)


def _route_before_cell(info: Any = None) -> None:
    """pre_run_cell callback: a cell may have swapped sys.stdout (``%%capture`` does), so thread
    jobs are routed again before each cell. Takes IPython's ``info`` (IPython 9 passes it and no
    longer adapts callbacks without parameters; IPython 8 passes it to callbacks that accept it)."""
    install_routing()


_route_before_cell._rjobs_callback = True  # type: ignore[attr-defined]


def _unregister_callbacks(shell: Any) -> None:
    """Remove every callback this extension registered, also one an older copy of this module
    registered (``%reload_ext``) or one IPython wrapped: they carry ``_rjobs_callback``."""
    callbacks = shell.events.callbacks["pre_run_cell"]
    for callback in list(callbacks):
        if getattr(callback, "_rjobs_callback", False) or getattr(getattr(callback, "__wrapped__", None), "_rjobs_callback", False):
            callbacks.remove(callback)


def _route_display(shell: Any) -> None:
    """``display()`` called by a thread job becomes one of its records, not output of whatever
    cell is running (the usual fault of background threads in Jupyter)."""
    publisher = shell.display_pub
    if getattr(publisher, "_rjob_routed", False):
        return
    original = publisher.publish

    def publish(data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> Any:
        sink = current_sink()
        if sink is None:
            return original(data, metadata, *args, **kwargs)
        sink.record("display", {"data": dict(data), "metadata": dict(metadata or {})})
        return None

    publisher.publish = publish
    publisher._rjob_routed = True


class Renderer:
    """Shows records in the current cell: text to stdout/stderr, display data as rich output,
    errors as tracebacks, progress as a line; values are collected, not shown."""

    PROGRESS_INTERVAL = 0.5  # while streaming, at most one progress line a job per this many seconds

    def __init__(self, shell: Any, jobs: Iterable[Job], streaming: bool = False) -> None:
        self.shell = shell
        self.jobs = {job.id: job for job in jobs}
        self.labelled = len(self.jobs) > 1
        self.streaming = streaming
        self.values: dict[int, Any] = {}
        self._last_job: int | None = None
        self._unshown_progress: dict[int, Record] = {}
        self._progress_shown_at: dict[int, float] = {}

    def render(self, record: Record) -> None:
        if self.labelled and record.job_id != self._last_job and record.kind is not RecordKind.VALUE:
            job = self.jobs.get(record.job_id)
            where = f" on {job.location}" if job is not None and job.parent is not None else ""
            sys.stdout.write(f"--- {job.label if job else record.job_id}{where} ---\n")
            self._last_job = record.job_id
        kind = record.kind
        if kind is RecordKind.STDOUT:
            sys.stdout.write(record.data)
        elif kind is RecordKind.STDERR:
            sys.stderr.write(record.data)
        elif kind is RecordKind.DISPLAY:
            from IPython.display import publish_display_data

            sys.stdout.flush()
            publish_display_data(data=record.data.get("data", {}), metadata=record.data.get("metadata") or {})
        elif kind is RecordKind.PROGRESS:
            self._unshown_progress[record.job_id] = record
            shown_at = self._progress_shown_at.get(record.job_id, 0.0)
            if self.streaming and record.time - shown_at >= self.PROGRESS_INTERVAL:
                self._show_progress(self._unshown_progress.pop(record.job_id))
        elif kind is RecordKind.VALUE:
            self.values[record.job_id] = record.data
        elif kind is RecordKind.ERROR:
            self._show_error(record.data)

    def _show_progress(self, record: Record) -> None:
        self._progress_shown_at[record.job_id] = record.time
        data = record.data
        total = data.get("total")
        amount = f"{100 * data['current'] / total:.0f}% ({data['current']}/{total})" if total else f"{data['current']}"
        sys.stdout.write(f"progress: {amount} {data.get('message', '')}".rstrip() + "\n")

    def _show_error(self, data: dict[str, Any]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        ename, evalue, stb = data.get("ename", "Error"), data.get("evalue", ""), data.get("traceback") or []
        if str(getattr(self.shell, "colors", "")).lower() == "nocolor":
            stb = [_ANSI_ESCAPE.sub("", line) for line in stb]
        show = getattr(self.shell, "_showtraceback", None)
        if show is None:
            sys.stderr.write("\n".join(stb) + "\n")
            return
        show(type(ename, (Exception,), {}), evalue, list(stb))

    def finish(self) -> None:
        """Show the latest progress not shown yet, and flush."""
        for record in self._unshown_progress.values():
            self._show_progress(record)
        self._unshown_progress.clear()
        sys.stdout.flush()
        sys.stderr.flush()
