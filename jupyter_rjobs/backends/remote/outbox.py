"""Frames that may wait a moment before they go to a host: a job's CLEAN once all of it is here.

Sending one costs a packet each way through SSH, a wake-up of a sending thread in the kernel and
of the host's server, and on a busy machine each wake-up is a context switch. So such a frame
waits in its connection's :class:`Outbox`: it goes in the same write as the next frame sent to
that host (the next job's RUN, as a rule), or at most :data:`DELAY` later, sent by one thread for
every connection (:class:`Flusher`), which wakes once for all the frames that came meanwhile.
A frame whose write fails is handed back (``lost``): its sender keeps what it owes the host.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Protocol

__all__ = ["DELAY", "Outbox", "Flusher", "FLUSHER"]

DELAY = 0.02  # seconds a frame may wait for another to go with


class _Flushable(Protocol):
    def flush_outbox(self) -> None: ...


class Outbox:
    """One connection's waiting frames, in order, each with what to do if it is lost."""

    def __init__(self) -> None:
        self._frames: list[tuple[dict[str, Any], Callable[[], None]]] = []
        self._lock = threading.Lock()  # held for a list operation only, never while sending

    def put(self, header: dict[str, Any], lost: Callable[[], None]) -> None:
        with self._lock:
            self._frames.append((header, lost))

    def take(self) -> list[tuple[dict[str, Any], Callable[[], None]]]:
        """Every waiting frame, in order; the outbox is empty after."""
        with self._lock:
            frames, self._frames = self._frames, []
        return frames

    def __bool__(self) -> bool:
        return bool(self._frames)


class Flusher:
    """The thread that sends what waited :data:`DELAY` in any outbox (most went sooner, with a
    frame sent after them)."""

    def __init__(self, delay: float = DELAY) -> None:
        self.delay = delay
        self._due: dict[int, _Flushable] = {}  # by id: the connections with frames waiting
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def due(self, connection: _Flushable) -> None:
        """``connection``'s outbox has a frame: flush it within the delay."""
        with self._cond:
            first = not self._due
            self._due[id(connection)] = connection
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rjob-outbox", daemon=True)
                self._thread.start()
            elif first:  # else it is awake already, and takes this one in the same round
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
            time.sleep(self.delay)  # what comes meanwhile goes in this round
            with self._cond:
                due, self._due = self._due, {}
            for connection in due.values():
                try:
                    connection.flush_outbox()
                except Exception:  # noqa: BLE001 - one connection's failure must not end the others' flushing
                    pass


FLUSHER = Flusher()
