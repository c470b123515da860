"""How many jobs of one kind run at once: the rest wait NotStarted, in order."""

from __future__ import annotations

import collections
import threading
from typing import Callable

from jupyter_rjobs.core.job import Job, JobState

__all__ = ["Throttle"]


class Throttle:
    """At most ``limit`` jobs of one kind run at once; the rest wait NotStarted, in order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active: set[Job] = set()
        self._queue: collections.deque[tuple[Job, Callable[[], None]]] = collections.deque()
        self._lock = threading.Lock()

    def submit(self, job: Job, launch: Callable[[], None]) -> None:
        with self._lock:
            if len(self._active) >= self.limit:
                self._queue.append((job, launch))
                return
            self._active.add(job)
        launch()

    def finished(self, job: Job) -> None:
        with self._lock:
            self._active.discard(job)
            next_launch = None
            while self._queue and len(self._active) < self.limit:
                queued, launch = self._queue.popleft()
                if queued.state is JobState.NotStarted:
                    self._active.add(queued)
                    next_launch = launch
                    break
        if next_launch is not None:
            next_launch()

    def cancel(self, job: Job) -> bool:
        with self._lock:
            for entry in self._queue:
                if entry[0] is job:
                    self._queue.remove(entry)
                    return True
        return False
