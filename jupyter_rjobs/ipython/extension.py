"""IPython integration: one JobManager per shell and display routing for thread jobs (received
records are shown in the cell by ``_render.py``'s ``CellRenderer``, re-exported here as ``Renderer``)."""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any

from jupyter_rjobs.agent.capture import current_sink, install_routing
from jupyter_rjobs.core.manager import JobManager
from jupyter_rjobs.ipython import card_display as _card_display
from jupyter_rjobs.ipython import prompt as _ipython_prompt
from jupyter_rjobs.ipython.render import CellRenderer as Renderer  # the one renderer of records (_render.py); this name for its callers

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
    from jupyter_rjobs.ipython.magics import RJobMagics

    manager = get_manager(shell)
    shell.register_magics(RJobMagics(shell, manager))
    _ipython_prompt.install(shell)  # login questions (password, one-time code) asked in the notebook
    _route_display(shell)
    _card_display.install(shell)  # %%rjob start shows its job as a live card
    _unregister_callbacks(shell)  # %reload_ext: never twice
    shell.events.register("pre_run_cell", _route_before_cell)
    manager.prewarm()
    host = os.environ.get("JUPYTER_RJOBS_ENTER")
    if host:  # a kernel spec made with `jupyter rjobs install-kernel --host HOST`
        _enter_host(shell, manager, host)


def _enter_host(shell: Any, manager: JobManager, host: str) -> None:
    """Open a session on ``host`` and enter it: every cell of this kernel runs there."""
    from jupyter_rjobs.core.errors import RJobError
    from jupyter_rjobs.ipython.enter import enter

    try:
        session = manager.new_session(host, name=host)
    except RJobError as exc:
        print(f"jupyter_rjobs: cells run here, not on {host}: {exc}", file=sys.stderr)
        return
    enter(shell, session)
    print(f"[{session.name}@{session.host}] Cells of this kernel run in {session.label} on {session.host}; `%rjob exit` brings them back here.")


def unload(shell: Any) -> None:
    _ipython_prompt.uninstall(shell)
    _card_display.uninstall(shell)
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
