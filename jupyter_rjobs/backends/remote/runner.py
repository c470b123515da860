"""A remote job seen from the kernel (:class:`RemoteRunner`): it follows the job's frames from
whichever connection carries them now, acks and fetches its records, stops it, and deletes its
spool on the host once everything of it is here (see backend.py for the connections)."""

from __future__ import annotations

import threading
from typing import Any, Iterator, Sequence

from jupyter_rjobs.agent import protocol
from jupyter_rjobs.backends.base import FrameApplier, JobRunner
from jupyter_rjobs.backends.remote import registry as _registry
from jupyter_rjobs.backends.remote.host import HostConnection
from jupyter_rjobs.backends.remote.streams import AckingStream, RemoteSpoolStream
from jupyter_rjobs.core.errors import HostError
from jupyter_rjobs.core.job import Job, JobState
from jupyter_rjobs.core.records import Record

__all__ = ["RemoteRunner"]

FETCH_PART = 4 * 2**20  # bytes of a remote-cache spool fetched at a time (a longer record comes whole)


class RemoteRunner(JobRunner):
    """A remote job, seen from the kernel: it follows the job's frames from whichever
    connection currently carries them."""

    def __init__(self, job: Job, connection: HostConnection, cache: str, stop_grace: float, received: int = 0) -> None:
        super().__init__(job)
        self.connection = connection
        self.cache = cache
        self.instance = str(job.instance_id)
        self.stop_grace = stop_grace
        self.last_seq = received  # the highest sequence number the kernel has of this job
        self.user_disconnected = False
        self._stop_grace: float | None = None  # a stop asked for: sent again on every re-attach until it ends
        self._clean_pending = False  # removed while its host was out of reach: its spool goes once it is back
        self._cleaned = False  # its CLEAN was sent
        self._clean_lock = threading.Lock()
        self._apply = FrameApplier(job, connection.python_version)
        self._fetch_lock = threading.Lock()
        self._fetched: list[Record] | None = None
        self._fetch_reply: dict[str, Any] = {}
        self._corrupt = False  # its spool on the host cannot be read to its end: kept for inspection
        self._fetch_done = threading.Event()
        self._fetch_problem: str | None = None
        if cache == "remote":
            job.use_stream(lambda on_append: RemoteSpoolStream(job.id, on_append, self, received))
        else:
            job.use_stream(lambda on_append: AckingStream(job.id, on_append, self))

    def info(self) -> dict[str, Any]:
        """What the local registry keeps so that another kernel can find this job again."""
        job = self.job
        return {"host": job.location, "python": self.connection.python, "name": job.name,
                "command": job.command, "code": job.code, "cache": self.cache, "detached": job.detached,
                "session": str(job.session.instance) if job.session is not None else None}

    @property
    def keeps_spool(self) -> bool:
        """Whether the host keeps this job's spool after it ends (else it goes once all is here)."""
        return self.cache == "remote" or self.job.detached or not self.job.state.finished or self._corrupt

    def start(self, header: dict[str, Any], buffers: Sequence[Any]) -> None:
        self.connection.attach(self.instance, self)
        self.connection.send(
            dict(header, job=self.instance, cache=self.cache, name=self.job.name, detached=self.job.detached, host=self.job.location), buffers
        )

    def reattach(self, connection: HostConnection, replace: int = 0, force: bool = False) -> None:
        """Follow the job from ``connection`` (after a reconnect, or adopting it), from where we are."""
        self.connection = connection
        self._apply.python_version = connection.python_version
        self.user_disconnected = False
        connection.attach(self.instance, self)
        connection.send({"op": protocol.ATTACH, "job": self.instance, "after": self.last_seq, "cache": self.cache,
                         "replace": replace, "force": force, "detached": self.job.detached})
        if self._stop_grace is not None and not self.job.state.finished:
            connection.send({"op": protocol.STOP, "job": self.instance, "grace": self._stop_grace})
        if self._clean_pending:
            self._clean()

    @property
    def left_on_host(self) -> str:
        """What removing this job could not delete (its host was out of reach), in words; "" if nothing."""
        if not self._clean_pending:
            return ""
        return (f"its spool stays on {self.connection.host} until the connection is back (it reconnects by itself;"
                f" or %rjob connect {self.connection.host}), then it is deleted")

    @property
    def stop_pending_note(self) -> str:
        """Why a stop has not ended the job yet, in words."""
        if self.connection.alive:
            return f"{self.connection.host} has not confirmed the stop yet"
        return f"the connection to {self.connection.host} is down; the stop is sent again when it is back"

    def release(self) -> None:
        """Stop following the job (a disconnect): it goes on on the host."""
        self.user_disconnected = True
        self.connection.send_quietly({"op": protocol.RELEASE, "job": self.instance})
        self.connection.detach(self.instance)
        if not self.job.state.finished:
            self.job.reason = f"disconnected; it goes on on {self.connection.host} (reconnect with %rjob connect)"
            self.job.set_state(JobState.Disconnected)

    # frames from the host
    def on_frame(self, op: str | None, header: dict[str, Any], buffers: list[bytearray]) -> None:
        job = self.job
        if op == protocol.RECORD:
            seq = int(header.get("seq", 0))
            self._corrupt = self._corrupt or (header.get("kind") == "error" and (header.get("data") or {}).get("ename") == "SpoolCorrupt")
            if self._fetched is not None and header["kind"] != "state":
                self._fetched.append(self._apply.record(header, buffers))
                return
            if seq <= self.last_seq:
                return  # already here (sent again after a reconnect)
            self.last_seq = seq
            self._apply(header, buffers)
            if header["kind"] == "state" and JobState(header["data"]).finished:
                self._ended()
        elif op == protocol.NOTICE and isinstance(job.stream, RemoteSpoolStream):
            self.last_seq = max(self.last_seq, int(header["seq"]))
            job.stream.notice(int(header["seq"]))
        elif op == protocol.FETCHED:
            self._fetch_reply = header
            self._fetch_done.set()
        elif op == protocol.ATTACHED:
            if job.state in (JobState.Disconnected, JobState.NotStarted):
                job.reason = ""
                job.set_state(JobState.Running)  # its final state, if it ended meanwhile, follows
        elif op == protocol.GONE:
            job.reason = f"job spool is gone on {self.connection.host}"
            if not job.state.finished:
                job.fail("HostError", f"job spool is gone on {self.connection.host} (was the host rebuilt or its ~/.cache cleared?)")
            self._fetch_failed(job.reason)
            self.connection.detach(self.instance)
        elif op == protocol.REFUSED:
            job.reason = str(header.get("reason"))
            if header.get("spool_problem"):  # a spool of another format: said, never misread
                job.reason = f"{job.label}'s spool on {self.connection.host} {header['spool_problem']}"
            if header.get("refused") and not job.state.finished:  # not ours alone: kept there as it is, never loaded
                job.fail("SpoolRefused", f"{self.connection.host}: {job.reason}")
            self._fetch_failed(job.reason)
            self.connection.detach(self.instance)
        elif op == protocol.FAILED and header.get("for", protocol.RUN) != protocol.RUN:  # nothing to delete: say it
            self._fetch_failed(f"{self.connection.host}: {header.get('error')}")
        elif op == protocol.FAILED:  # the host could not start it (a full disk, say): nothing of it may stay there
            job.fail("HostError", f"{self.connection.host}: {header.get('error')}")
            self._clean()

    def _fetch_failed(self, problem: str) -> None:
        """A fetch that waits is answered at once with ``problem`` (never after a timeout)."""
        self._fetch_problem = problem
        self._fetch_done.set()

    def _ended(self) -> None:
        if self.keeps_spool:
            _registry.remember(self.instance, state=str(self.job.state))
        else:  # every record is safely here: the host's spool (and the registry entry) can go
            self._clean(soon=True)  # with the next frame sent there, or a moment later (see outbox)

    def fetch(self, after: int) -> list[Record]:
        """Every record of the host's spool after ``after`` (see fetch_parts)."""
        return [record for part in self.fetch_parts(after) for record in part]

    def fetch_parts(self, after: int, limit: int = FETCH_PART) -> Iterator[list[Record]]:
        """The records after ``after``, in parts of about ``limit`` bytes of frames each (an agent
        that knows no limit sends them all in one part)."""
        offset = last = 0
        while True:
            records, reply = self._fetch_part({"after": after, "limit": limit, "offset": offset, "last": last})
            if records:
                after = records[-1].seq
                yield records
            if not reply.get("more"):
                return
            offset, last = int(reply.get("offset") or 0), int(reply.get("last") or 0)

    def _fetch_part(self, request: dict[str, Any]) -> tuple[list[Record], dict[str, Any]]:
        after = int(request["after"])
        with self._fetch_lock:
            self._fetched, self._fetch_reply, self._fetch_problem = [], {}, None
            self._fetch_done.clear()
            self.connection.send(dict(request, op=protocol.FETCH, job=self.instance))
            if not self._fetch_done.wait(300) or not self.connection.alive or self._fetch_problem:
                self._fetched = None
                raise HostError(self.connection.host, self._fetch_problem or "the job's records could not be fetched (the connection was lost); try again once it is back")
            records, self._fetched = self._fetched, None
            reply = self._fetch_reply
        return sorted({r.seq: r for r in records if r.seq > after}.values(), key=lambda r: r.seq), reply

    def ack(self, seq: int) -> None:
        self.connection.send_quietly({"op": protocol.ACK, "job": self.instance, "seq": seq})

    def frame_failed(self, exc: BaseException) -> None:
        """A frame from the host could not be applied to the job: it fails, saying why."""
        self.job.fail("HostError", f"a frame from {self.connection.host} could not be applied to the job ({type(exc).__name__}: {exc})")

    def connection_lost(self) -> None:
        if not self.job.state.finished:
            self.job.reason = f"the connection to {self.connection.host} was lost; reconnecting"
            self.job.set_state(JobState.Disconnected)
        self._fetch_done.set()

    # stopping and cleaning
    def terminate(self) -> None:
        self._stop_grace = self.stop_grace
        self.connection.send_quietly({"op": protocol.STOP, "job": self.instance, "grace": self.stop_grace})

    def kill(self) -> None:
        self._stop_grace = 0.0
        self.connection.send_quietly({"op": protocol.STOP, "job": self.instance, "grace": 0})

    def cleanup(self) -> None:
        self._clean()

    def _clean(self, soon: bool = False) -> None:
        """Delete the job's spool on the host (and its registry entry). A host out of reach keeps
        both until the connection is back (re-attaching cleans then), never silently. ``soon``:
        the CLEAN may wait a moment for another frame to go with (never waits to be sent: the
        reading thread asks this)."""
        with self._clean_lock:
            if self._cleaned:  # once is enough (its end and its removal both ask)
                if not soon:
                    self.connection.flush_outbox()  # removed: its CLEAN, if it still waits, goes now
                return
            header = {"op": protocol.CLEAN, "job": self.instance}
            try:
                if soon:
                    self.connection.send_soon(header, self._clean_lost)
                else:
                    self.connection.send(header)
            except HostError:
                self._clean_pending = True
                return
            self._cleaned = True
        self._clean_pending = False
        _registry.forget(self.instance)
        if self.job.state.finished:
            self.connection.detach(self.instance)

    def _clean_lost(self) -> None:
        """The CLEAN that waited could not be sent (the connection broke): it is sent again once
        the connection is back (the job is followed again, to be re-attached)."""
        self._clean_pending = True  # no lock: called while the connection's send lock is held
        self._cleaned = False
        self.connection.attach(self.instance, self)
