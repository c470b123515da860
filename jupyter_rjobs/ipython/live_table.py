"""``%rjob panel`` in a terminal: the job table, redrawn when jobs change, until Ctrl-C.

No widgets here (a terminal has no front end to show them); the table is ``_table.py``'s.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime
from typing import IO

from jupyter_rjobs.core.manager import EventKind, JobEvent, JobManager
from jupyter_rjobs.core.records import RecordKind
from jupyter_rjobs.core.table import text_table

__all__ = ["live_table"]

CLEAR_SCREEN = "\x1b[H\x1b[2J"


def live_table(manager: JobManager, interval: float = 1.0, out: IO[str] | None = None) -> int:
    """Print the job table, then again each time a job changes (at most once per ``interval``
    seconds), until KeyboardInterrupt. On a terminal each table replaces the last. Returns how
    many tables were drawn."""
    out = out or sys.stdout
    changed = threading.Event()

    def on_event(event: JobEvent) -> None:
        if event.kind is EventKind.RECORD and event.record is not None and event.record.kind is not RecordKind.PROGRESS:
            return  # output alone changes nothing in the table
        changed.set()

    unsubscribe = manager.subscribe(on_event)
    clear = bool(getattr(out, "isatty", lambda: False)())
    drawn = 0
    try:
        while True:
            changed.clear()
            jobs = manager.list()
            table = text_table(jobs, include_children=True) if jobs else "(no jobs)"
            running = sum(1 for job in jobs if not job.state.finished)
            footer = f"{datetime.now():%H:%M:%S}  {len(jobs)} jobs, {running} running  (live: Ctrl-C to stop)"
            out.write((CLEAR_SCREEN if clear else "\n") + table + "\n" + footer + "\n")
            out.flush()
            drawn += 1
            time.sleep(interval)  # the throttle: changes meanwhile make one redraw
            while not changed.wait(0.5):  # short waits keep Ctrl-C prompt everywhere
                pass
    except KeyboardInterrupt:
        out.write("(live table stopped)\n")
        out.flush()
    finally:
        unsubscribe()
    return drawn
