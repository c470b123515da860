"""A job's output: one ordered stream of numbered records, read from a cursor.

Whoever runs the job (a thread in the kernel, a worker process, an agent writing a
spool on a remote host) appends records; each has a sequence number that only grows.
Receiving reads from the cursor: without ``keep`` it advances the cursor and drops
what it returned, with ``keep`` it leaves everything. A record whose number is not
above the last one is a duplicate (a re-read after a reconnect) and is ignored, so
re-attaching can never repeat or lose output.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple

__all__ = ["RecordKind", "Record", "RecordStream"]


class RecordKind(str, enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"
    DISPLAY = "display"  # data: {"data": mime bundle, "metadata": {...}}
    PROGRESS = "progress"  # data: {"current": n, "total": n or None, "message": str}
    VALUE = "value"  # data: the value of the code's last expression
    ERROR = "error"  # data: {"ename": str, "evalue": str, "traceback": [str, ...]}

    def __str__(self) -> str:
        return self.value


class Record(NamedTuple):
    """One numbered piece of a job's output (a tuple: cheap to make, immutable)."""

    seq: int
    kind: RecordKind
    data: Any
    time: float
    job_id: int = 0


class RecordStream:
    """Thread-safe append-only record stream with a receive cursor."""

    def __init__(self, job_id: int = 0, on_append: Callable[[Record], None] | None = None) -> None:
        self.job_id = job_id
        self._records: list[Record] = []  # records from the cursor on (received ones are dropped)
        self._last_seq = 0
        self._closed = False
        self._lock = threading.Lock()  # readers wait on the manager's activity condition
        self._on_append = on_append

    # -- writing --------------------------------------------------------------------
    def append(self, kind: RecordKind, data: Any, seq: int | None = None, when: float | None = None) -> Record | None:
        """Append a record; ``seq=None`` numbers it next. Returns None for a duplicate."""
        with self._lock:
            if seq is None:
                seq = self._last_seq + 1
            elif seq <= self._last_seq:
                return None
            kind = kind if kind.__class__ is RecordKind else RecordKind(kind)
            record = Record(seq, kind, data, time.time() if when is None else when, self.job_id)
            self._last_seq = seq
            self._records.append(record)
        if self._on_append is not None:
            self._on_append(record)
        return record

    def close(self) -> None:
        """No more records will come (the job has ended)."""
        self._closed = True  # one store: readers look without the lock

    # -- reading --------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def has_unreceived(self) -> bool:
        return bool(self._records)

    def has_after(self, seq: int) -> bool:
        """Whether an unreceived record is numbered above ``seq``."""
        records = self._records
        return bool(records) and records[-1].seq > seq

    def take(self, after: int = 0, keep: bool = False) -> list[Record]:
        """The unreceived records numbered above ``after``; without ``keep`` they count as received."""
        with self._lock:
            if not after and not keep:
                records, self._records = self._records, []  # all of them: no copies
                return records
            records = [r for r in self._records if r.seq > after] if after else list(self._records)
            if not keep and records:
                self._records = [r for r in self._records if r.seq <= after]
            return records

    def peek(self, last: int | None = None) -> list[Record]:
        """A look, not a receive: the unreceived records this stream holds here (the last ``last`` of
        them), the cursor left where it is. Never fetches: a stream whose records are elsewhere
        (a host's spool) shows only what has come into the kernel."""
        with self._lock:
            records = self._records if last is None else self._records[-last:] if last > 0 else []
            return list(records)

    def iter_take(self, after: int = 0, keep: bool = False) -> Iterator[Record]:
        """``take`` as an iterator: a stream whose records are elsewhere (a host's spool) fetches
        them a part at a time instead of all at once."""
        yield from self.take(after, keep)
