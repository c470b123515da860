"""When a job is shown as a live card: ``%%rjob start`` asks for one (in a kernel, unless turned
off), and the shell's display formatter for jobs makes it when that very cell shows its job.
Every other display of a job (a later cell, a terminal, ``print``) stays the one-row table.
ipywidgets is imported only when a card is made."""

from __future__ import annotations

import functools
import logging
import sys
import threading
import weakref
from typing import Any

from jupyter_rjobs.core.job import Job
from jupyter_rjobs.core.manager import JobManager

__all__ = ["install", "uninstall", "want_card"]

log = logging.getLogger(__name__)

# a job -> (the execution count of the cell that started it, its manager, the tail's lines)
_wanted: weakref.WeakKeyDictionary[Job, tuple[int, JobManager, int]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def want_card(shell: Any, job: Job, manager: JobManager, lines: int) -> None:
    """Show ``job`` as a card if the running cell shows it (its Out)."""
    with _lock:
        _wanted[job] = (shell.execution_count, manager, lines)


def _format(shell: Any, job: Job) -> dict[str, Any] | None:
    """The display formatter's hook for jobs: the card's mime bundle, or None (the table)."""
    with _lock:
        wanted = _wanted.pop(job, None)
    if wanted is None or wanted[0] != shell.execution_count:
        return None  # not the cell that started it: the table
    _count, manager, lines = wanted
    try:
        from jupyter_rjobs.ipython.card import card_bundle

        return card_bundle(job, manager, lines=lines, shell=shell)
    except Exception:  # a card that cannot be made: the table, as without cards
        log.exception("jupyter_rjobs: the job card of %s could not be made; showing the table", job.label)
        return None


def _settle(result: Any = None) -> None:
    """post_execute: cards that ended while the cell ran are sent once more, as part of it (card.settle_all)."""
    card = sys.modules.get("jupyter_rjobs.ipython.card")  # no card was ever made: nothing to do
    if card is not None:
        card.settle_all()


_settle._rjobs_callback = True  # type: ignore[attr-defined]


def install(shell: Any) -> None:
    formatter = getattr(getattr(shell, "display_formatter", None), "mimebundle_formatter", None)
    if formatter is not None:
        formatter.for_type(Job, functools.partial(_format, shell))
    if hasattr(shell, "events"):
        _unregister(shell)
        shell.events.register("post_execute", _settle)


def uninstall(shell: Any) -> None:
    formatter = getattr(getattr(shell, "display_formatter", None), "mimebundle_formatter", None)
    if formatter is not None:
        formatter.pop(Job, None)
    if hasattr(shell, "events"):
        _unregister(shell)


def _unregister(shell: Any) -> None:
    """Remove this module's post_execute callback, also one an older copy registered (%reload_ext)."""
    callbacks = shell.events.callbacks["post_execute"]
    for callback in list(callbacks):
        if getattr(callback, "_rjobs_callback", False) or getattr(getattr(callback, "__wrapped__", None), "_rjobs_callback", False):
            callbacks.remove(callback)
