"""Receive, Stop and Remove as the widgets do them (the panel's rows and the job cards): one
implementation, shared. A click never ends in a traceback: what happened is said in the widget's
status line; a stop (which may wait out a grace period) runs beside the kernel."""

from __future__ import annotations

import threading
from typing import Any, Callable

from jupyter_rjobs.core.errors import JobNotFoundError, RJobError
from jupyter_rjobs.core.job import Job, JobState
from jupyter_rjobs.core.manager import JobManager
from jupyter_rjobs.core.records import Record

__all__ = ["JobActions"]


class JobActions:
    """A mixin for a widget that acts on jobs. The widget provides ``manager``, ``say(message)``
    (its status line), ``show_records(job, records)`` (its own Output) and ``refresh()``."""

    manager: JobManager

    def say(self, message: str) -> None:
        raise NotImplementedError

    def show_records(self, job: Job, records: list[Record]) -> None:
        raise NotImplementedError

    def refresh(self) -> None:
        raise NotImplementedError

    def _init_actions(self) -> None:
        self._stopping: set[int] = set()
        self._helpers: list[threading.Thread] = []
        self._actions_lock = threading.Lock()

    def act_on(self, action: str, job: Job) -> None:
        """``action`` ("receive", "stop", "remove") on ``job``; errors are said, never raised."""
        try:
            getattr(self, f"_{action}_job")(job)
        except RJobError as exc:
            self.say(str(exc))
        except Exception as exc:  # noqa: BLE001 - a click never ends in a traceback
            self.say(f"{action} {job.label} failed: {type(exc).__name__}: {exc}")

    def _still_here(self, job: Job, doing: str) -> bool:
        try:
            self.manager.get(job.id)
        except JobNotFoundError:
            self.say(f"{job.label} was removed; nothing to {doing}")
            self.refresh()
            return False
        return True

    def _receive_job(self, job: Job) -> None:
        if not self._still_here(job, "receive"):
            return
        records = self.manager.receive(job)
        if not records:
            self.say(f"{job.label}: nothing new to receive")
            return
        self.show_records(job, records)
        self.say(f"received {len(records)} record(s) from {job.label}")

    def _stop_job(self, job: Job) -> None:
        if not self._still_here(job, "stop"):
            return
        if job.state.finished:
            self.say(f"{job.label} has already ended ({job.state}); nothing to stop")
            return
        with self._actions_lock:
            if job.id in self._stopping or job.state is JobState.Stopping:
                self.say(f"{job.label} is already being stopped")
                return
            self._stopping.add(job.id)
        self.say(f"stopping {job.label}")
        self._in_background(self._stop_in_background, job)

    def _stop_in_background(self, job: Job) -> None:
        try:
            self.manager.stop(job)
            self.say(f"{job.label} is {job.state}")
        except Exception as exc:  # noqa: BLE001 - shown, never printed
            self.say(f"stop {job.label} failed: {type(exc).__name__}: {exc}")
        finally:
            with self._actions_lock:
                self._stopping.discard(job.id)

    def _remove_job(self, job: Job) -> None:
        if job.parent is not None:
            self.say(f"a child job goes with its parent: remove {job.parent.label}")
            return
        if not self._still_here(job, "remove"):
            return
        if not job.state.finished:
            self.say(f"{job.label} is {job.state}: stop it first")
            return
        self.manager.remove(job)
        self.say(f"removed {job.label}")

    def _in_background(self, target: Callable[..., None], *args: Any) -> None:
        """Slow actions (stop waits out a grace period) run beside the kernel; ``_join_helpers`` waits for them."""
        self._helpers = [t for t in self._helpers if t.is_alive()]
        helper = threading.Thread(target=target, args=args, name="rjob-widget-action", daemon=True)
        self._helpers.append(helper)
        helper.start()

    def _join_helpers(self) -> None:
        for helper in self._helpers:
            helper.join(self.manager.stop_grace + 5)
