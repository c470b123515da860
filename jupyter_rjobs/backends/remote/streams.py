"""The record streams of remote jobs: a kernel-cache job's records acknowledged to the host as
they are received, and a remote-cache job's records left in the host's spool, fetched a part at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

from jupyter_rjobs.core.records import Record, RecordKind, RecordStream

if TYPE_CHECKING:
    from jupyter_rjobs.backends.remote.runner import RemoteRunner

__all__ = ["AckingStream", "RemoteSpoolStream"]


class AckingStream(RecordStream):
    """A kernel-cache remote job's records: what the user receives is acknowledged to the host,
    so a kernel that adopts the job later gets exactly what nobody received."""

    def __init__(self, job_id: int, on_append: Callable[[Record], None], runner: RemoteRunner) -> None:
        super().__init__(job_id, on_append)
        self._runner = runner

    def take(self, after: int = 0, keep: bool = False) -> list[Record]:
        records = super().take(after, keep)
        if records and not keep and self._runner.keeps_spool:
            self._runner.ack(records[-1].seq)
        return records


class RemoteSpoolStream(RecordStream):
    """The record stream of a ``cache="remote"`` job: the records stay in the host's spool.

    The kernel hears only how far the spool goes (and the job's states and errors); ``take``
    fetches from the host, and without ``keep`` tells the host how far it was received.
    """

    def __init__(self, job_id: int, on_append: Callable[[Record], None], runner: RemoteRunner, received: int = 0) -> None:
        super().__init__(job_id, on_append)
        self._runner = runner
        self._host_last = received
        self._received = received

    def append(self, kind: RecordKind, data: Any, seq: int | None = None, when: float | None = None) -> Record | None:
        seq = seq if seq is not None else self._host_last + 1
        self.notice(seq)
        record = Record(seq, RecordKind(kind), data, when or 0.0, self.job_id)
        if self._on_append is not None:  # the job learns its error; the record itself stays on the host
            self._on_append(record)
        return record

    def notice(self, seq: int) -> None:
        with self._lock:
            self._host_last = max(self._host_last, seq)

    @property
    def has_unreceived(self) -> bool:
        return self._host_last > self._received

    def has_after(self, seq: int) -> bool:
        return self._host_last > max(seq, self._received)

    def take(self, after: int = 0, keep: bool = False) -> list[Record]:
        return list(self.iter_take(after, keep))

    def iter_take(self, after: int = 0, keep: bool = False) -> Iterator[Record]:
        """The records, fetched from the host a part at a time (never the whole spool in memory);
        without ``keep`` each part counts as received once all of it was taken."""
        start = max(after, self._received)
        if self._host_last <= start:
            return
        for part in self._runner.fetch_parts(start):
            yield from part
            if not keep:
                self._received = max(self._received, part[-1].seq)
                self._runner.ack(self._received)
