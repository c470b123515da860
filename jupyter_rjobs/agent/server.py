"""The host server: one per SSH connection (``serve_main``). It runs jobs in warm detached pairs
(:mod:`.supervisor`), forked ahead of time and used again while the kernel is there, forwards
each job's spool to the kernel as it grows,
and answers the kernel's requests (see the map in :mod:`.protocol`). A later server (after a
reconnect, or in a new kernel) adopts a job by its spool and goes on from a sequence number.

Three parts: :class:`Server` reads requests and dispatches them; :class:`Forwarder` follows
the jobs this server forwards (spool to kernel, stops, how each ended); the session requests
go to :mod:`.session`.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import sys
import time
import types
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

from . import session as sessions
from .capture import display, progress
from .forward import Forwarder, HostJob
from .listing import list_jobs
from .orphan import end_orphaned_work, let_go, owned_by
from .pairs import HAND_WAIT, Dispatcher
from .proctree import alive, process_start
from .protocol import (
    ACK,
    ATTACH,
    ATTACHED,
    CLEAN,
    FAILED,
    FETCH,
    FETCHED,
    GONE,
    HELLO,
    LIST,
    LISTING,
    PING,
    PONG,
    PROTOCOL_VERSION,
    RECORD,
    REFUSED,
    RELEASE,
    RUN,
    SESSION_ATTACH,
    SESSION_CLOSE,
    SESSION_NEW,
    SESSION_STATE,
    STOP,
    Inbox,
    read_frame,
    spool_problem,
    write_frame,
)
from .spool import (
    NO_PROCESS,
    Scanner,
    check_private,
    owner_elsewhere,
    read_cursor,
    read_json,
    spool_meta,
    spool_refusal,
    write_over,
    write_private,
)
from .spoolbin import SpoolBin
from .supervisor import Spare


class Server:
    """Reads the kernel's requests from stdin and answers on stdout; everything else it does
    (forking, forwarding) happens between requests, in :meth:`loop`."""

    def __init__(self, root: str, orphan_grace: Optional[float] = None) -> None:
        self.root = root
        self.orphan_grace = orphan_grace  # how long the kernel's non-detached work waits for it once it is gone
        self.detached: Set[str] = set()  # the jobs the kernel detached or let go of: they outlive it
        self.jobs_dir = os.path.join(root, "jobs")
        self.sessions_dir = os.path.join(root, "sessions")
        self.inp_fd = os.dup(0)
        self.inbox = Inbox(self._recv, self._recv_into)  # several requests per read when they come together
        self.out_fd = os.dup(1)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(null, fd)
        os.close(null)
        self.out = os.fdopen(self.out_fd, "wb", buffering=0, closefd=False)
        self.selector = selectors.DefaultSelector()  # epoll: no limit of 1024 jobs
        self.jobs = Forwarder(self.send, self.out_fd, self.selector)
        self.pairs = Dispatcher(self.jobs, self.detached)
        self.acks: Dict[str, int] = {}  # spool: how far the kernel received it, not yet in its cursor file
        self.removed = SpoolBin(self.jobs_dir)  # removed spools: deleted, or made ready for new jobs
        self.owner = f"{os.getpid()} {process_start(os.getpid())}".encode()
        self.request_counter = 0
        self.handlers: Dict[str, Callable[[Dict[str, Any], List[bytearray]], None]] = {
            PING: lambda h, b: self.pong(h),
            RUN: self.run,
            STOP: lambda h, b: self.stop(str(h.get("job", "")), float(h.get("grace", 3.0))),
            FETCH: lambda h, b: self.fetch(h),
            ACK: lambda h, b: self.acks.__setitem__(self.spool_of(str(h.get("job", ""))), int(h["seq"])),
            CLEAN: lambda h, b: self.clean(str(h.get("job", ""))),
            ATTACH: lambda h, b: self.attach(h),
            RELEASE: lambda h, b: self.release(str(h.get("job", "")), h.get("session")),
            LIST: lambda h, b: self.listing(),
            SESSION_NEW: lambda h, b: self.session_new(h),
            SESSION_ATTACH: lambda h, b: self.session_attach(str(h["session"])),
            SESSION_CLOSE: lambda h, b: self.session_close(str(h["session"])),
        }

    def send(self, header: Dict[str, Any], buffers: Sequence[Any] = ()) -> None:
        write_frame(self.out, header, buffers)

    def loop(self) -> None:
        """Serve until the kernel goes (the jobs go on: their spools keep everything). The kernel is
        gone when its requests end, or when what we send it finds no reader (a broken pipe: a
        kernel killed while its jobs were printing, before the end of its requests is read)."""
        for path in (self.root, self.jobs_dir, self.sessions_dir):
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            check_private(path)
        self.removed.collect_left_behind()
        self.selector.register(self.inp_fd, selectors.EVENT_READ, None)
        try:
            self.send({"op": HELLO, "version": PROTOCOL_VERSION, "python": sys.version.split()[0], "pid": os.getpid()})
            self.serve()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.orphaned()

    def serve(self) -> None:
        """Requests and forwarding, until the kernel's requests end."""
        next_sweep = time.monotonic()
        while True:
            # removed spools still to make ready (or delete): a look at once, else a turn waits for news
            idle_wait = 0.0 if self.removed.pending else 0.05
            events = self.selector.select(HAND_WAIT if self.pairs.waiting else idle_wait)
            self.jobs.quiet = not events
            for key, _ in events:
                if key.data is None:
                    if not self.on_requests():
                        return
                else:
                    self.jobs.woken(key.data)
            if self.pairs.waiting:
                self.pairs.dispatch()
            self.jobs.follow_adopted()
            if self.jobs.pair_ended:
                self.jobs.reap_children()
            if self.jobs.quiet:  # forking now would delay a running job's records: wait for a quiet moment
                self.replenish()
            if time.monotonic() >= next_sweep:  # a missed wake-up, a kill deadline: look at every job
                next_sweep = time.monotonic() + 0.2
                self.write_acks()
                self.jobs.reap_children()  # a session's pair, whose pipe we do not follow, too
                self.jobs.sweep()

    def orphaned(self) -> None:
        """The kernel's connection ended: let go of everything at once (a new kernel adopts its
        detached jobs), end the spare, and end its non-detached work after the grace period."""
        self.write_acks()
        self.removed.empty()
        self.pairs.dispatch(force=True)  # what the kernel started runs (its detached jobs outlive it)
        self.jobs.let_go_all()  # a free pair ends now, a busy one once its job has
        doomed = {}
        for job in list(self.jobs.jobs.values()):
            if job.session is None and job.instance not in self.detached and job.scanner.final is None:
                doomed[job.instance] = (job.spool, os.path.join(job.spool, "pid"))
            else:
                let_go(job.spool, self.owner)
        sessions = [path for path in (os.path.join(self.sessions_dir, s) for s in os.listdir(self.sessions_dir)) if owned_by(path, self.owner)]
        end_orphaned_work(doomed, sessions, self.owner, self.orphan_grace)

    def _recv(self, size: int) -> bytes:
        return os.read(self.inp_fd, size)

    def _recv_into(self, view: memoryview) -> int:
        return os.readv(self.inp_fd, [view])

    def on_requests(self) -> bool:
        """Handle the requests that came, every whole one received (several come in one read);
        False when the kernel is gone. A RUN goes before the CLEANs that came just before it
        (a job waits on it; a spool's deletion does not); nothing else overtakes them."""
        cleans: List[Dict[str, Any]] = []
        try:
            while True:
                frame = read_frame(self.inbox)
                if frame is None:
                    return False
                header, buffers = frame
                if header.get("op") == CLEAN:
                    cleans.append(header)
                else:
                    if header.get("op") != RUN:
                        self.handle_all(cleans)
                    self.handle(header, buffers)
                if not self.inbox.buffered:
                    return True
        finally:
            self.handle_all(cleans)

    def handle_all(self, headers: List[Dict[str, Any]]) -> None:
        for header in headers:
            self.handle(header, [])
        headers.clear()

    def handle(self, header: Dict[str, Any], buffers: List[bytearray]) -> None:
        """Handle one request. A bad request never ends the server."""
        handler = self.handlers.get(str(header.get("op")))
        try:
            if handler is not None:
                handler(header, buffers)
        except OSError as exc:  # "for": the kernel deletes what a failed RUN made, never what another request failed on
            self.send(_failed(header, _os_error_text(exc, self.root)))
        except Exception as exc:  # noqa: BLE001 - a bad request must not end the server
            self.send(_failed(header, f"{type(exc).__name__}: {exc}"))

    # -- jobs --------------------------------------------------------------------------------
    def spool_of(self, instance: str) -> str:
        return os.path.join(self.jobs_dir, str(uuid.UUID(instance)))  # a UUID, never a path

    def make_spool(self, header: Dict[str, Any], pid: bytes = NO_PROCESS) -> str:
        """A new job's spool: a removed one of ours made ready again, if there is one (see
        recycle_spool), else a new directory. Its files are written before it appears under the
        job's name: meta.json, owner, and ``pid`` (its pair's, when one is at hand)."""
        instance = str(header["job"])
        spool = self.spool_of(instance)
        meta = json.dumps(spool_meta(header, instance)).encode()

        def fill(path: str) -> None:
            write_over(os.path.join(path, "meta.json"), meta)
            write_over(os.path.join(path, "owner"), self.owner)
            write_over(os.path.join(path, "pid"), pid)

        if not self.removed.take(spool, fill):
            os.mkdir(spool, 0o700)
            fill(spool)
        return spool

    def run(self, header: Dict[str, Any], buffers: List[bytearray]) -> None:
        """Start a job in a free pair, or let it wait a moment for one (or queue it in its session)."""
        if header.get("session"):
            self.session_run(header, buffers)
            return
        self.pairs.start(str(header["job"]), header, buffers, lambda pid: self.make_spool(header, pid))

    def pong(self, header: Dict[str, Any]) -> None:
        """The answer to a ping: everything asked before it is done (the acks written too)."""
        self.write_acks()
        self.send({"op": PONG, "n": header.get("n")})

    def listing(self) -> None:
        """Every job spool and session here (for connect and list --all)."""
        self.write_acks()
        self.send({"op": LISTING, "jobs": list_jobs(self.jobs_dir, self.sessions_dir), "sessions": sessions.list_sessions(self.sessions_dir)})

    def write_acks(self) -> None:
        """Write how far the kernel received each job into its spool's cursor, once per sweep for
        all the acks that came meanwhile (a spool removed since is skipped)."""
        acks, self.acks = self.acks, {}
        for spool, seq in acks.items():
            if os.path.isdir(spool):
                write_private(os.path.join(spool, "cursor"), str(seq).encode())

    def replenish(self) -> None:
        """At a quiet moment: delete some removed spools, and fork a pair ahead of time, so a run
        request only hands it the job."""
        self.removed.empty(32)
        self.pairs.replenish()

    def stop(self, instance: str, grace: float) -> None:
        if self.pairs.stop_waiting(instance):
            return
        job = self.jobs.get(instance)
        if job is None or job.ended:
            return
        job.stopping = True
        if job.session is not None and self.unqueue(job):
            return
        if alive(job.pid, job.start):  # a session job is interrupted; a job's supervisor stops its tree
            os.kill(job.pid, signal.SIGINT if job.session else signal.SIGTERM)
        job.kill_at = time.monotonic() + grace

    def fetch(self, header: Dict[str, Any]) -> None:
        """Send the records of a job after sequence number ``after``, then FETCHED (GONE or REFUSED
        if its spool is not there, or not ours alone). With ``limit`` (bytes) it stops after about
        that much, saying ``more`` and the ``offset`` to go on from, so the kernel takes a long spool
        a part at a time. A corrupt spool: what comes before the bad bytes, then the records that
        fail the job saying where."""
        instance, after = str(header.get("job", "")), int(header.get("after", 0))
        limit, offset = int(header.get("limit") or 0), int(header.get("offset") or 0)
        spool = self.spool_of(instance)
        if not self.spool_usable(instance, spool):
            return
        scanner = Scanner(os.path.join(spool, "records"))
        scanner.offset = offset  # where the last part ended (a frame's start: the spool only grows)
        scanner.last_seq = int(header.get("last") or 0) if offset else 0
        sent, more = 0, False
        try:
            while True:
                try:
                    found = scanner.next()
                except ValueError:
                    self.send_corrupt(instance, scanner, after)
                    break
                if found is None:
                    break
                frame, start, end = found
                if frame.get("seq", 0) > after:
                    self.out.flush()
                    scanner.copy(self.out_fd, start, end)
                    sent += end - start
                    if limit and sent >= limit:
                        more = True
                        break
        finally:
            scanner.close()
        self.send({"op": FETCHED, "job": instance, "last": scanner.last_seq, "offset": scanner.offset, "more": more})

    def send_corrupt(self, instance: str, scanner: Scanner, after: int) -> None:
        """The records that end a job whose spool is corrupt, numbered after its last good one."""
        seq = scanner.last_seq  # the numbers the forwarder gave them too
        for kind, data in scanner.corrupt_records():
            seq += 1
            if seq > after:
                self.send({"op": RECORD, "job": instance, "seq": seq, "kind": kind, "time": time.time(), "data": data})

    def clean(self, instance: str) -> None:
        self.pairs.waiting.pop(instance, None)
        # its spool may serve another job only if nothing writes to it any more: its end is written
        reusable = self.jobs.cleaned(instance)
        spool = self.spool_of(instance)
        if spool_refusal(spool) is None:  # a refused spool is evidence: never deleted
            self.removed.put(spool, instance, reusable)  # gone at once; deleted, or made ready, at a quiet moment

    def spool_usable(self, instance: str, spool: str) -> bool:
        """Whether a job's spool is there and ours alone; else the kernel is told (GONE, REFUSED)."""
        if not os.path.lexists(spool) or not os.path.lexists(os.path.join(spool, "records")):
            self.send({"op": GONE, "job": instance})
            return False
        refusal = spool_refusal(spool)
        if refusal is not None:
            self.send({"op": REFUSED, "job": instance, "reason": refusal, "refused": True})
            return False
        return True

    # -- adopting jobs this server did not start --------------------------------------------
    def attach(self, header: Dict[str, Any]) -> None:
        """Adopt a job by its spool and forward it from sequence number ``after``."""
        instance = str(header["job"])
        spool = self.spool_of(instance)
        if not self.spool_usable(instance, spool):
            return
        meta = read_json(os.path.join(spool, "meta.json")) or {}
        problem = spool_problem(meta)
        if problem is not None:  # never misread another format's records
            self.send({"op": REFUSED, "job": instance, "reason": f"its spool {problem}", "spool_problem": problem})
            return
        if not self.take_over(instance, spool, header):
            return
        process = read_json(os.path.join(spool, "pid")) or {}
        job = HostJob(instance, spool, int(process.get("pid", 0)), process.get("start"), header.get("cache") or meta.get("cache") or "kernel")
        job.session = meta.get("session")
        job.skip_upto = int(header.get("after", 0))
        if header.get("detached", meta.get("detached")):
            self.detached.add(instance)
        else:
            self.detached.discard(instance)
        if job.session:
            sup = read_json(os.path.join(self.session_dir(job.session), "pid")) or {}
            job.pid, job.start = int(sup.get("pid", 0)), sup.get("start")
        self.jobs.track(job)
        self.write_acks()
        self.send({"op": ATTACHED, "job": instance, "cursor": read_cursor(spool), "meta": meta})
        self.jobs.forward(job)

    def take_over(self, instance: str, spool: str, header: Dict[str, Any]) -> bool:
        """Become the server that forwards this spool, unless another kernel's server does
        (then REFUSED, unless forced or it is our own earlier, stranded server)."""
        other = owner_elsewhere(spool)
        if other is not None and header.get("force"):
            pass  # the user takes it over; the other server goes on sending into its own connection
        elif other is not None and other == header.get("replace"):
            try:
                os.kill(other, signal.SIGTERM)  # our own earlier server, stranded by a lost connection
            except OSError:
                pass
        elif other is not None:
            self.send({"op": REFUSED, "job": instance, "reason": f"another kernel is attached to it (its agent is pid {other}); connect with --force to take it over"})
            return False
        old = self.jobs.get(instance)
        if old is not None:
            self.jobs.drop(old)
        write_private(os.path.join(spool, "owner"), self.owner)
        return True

    def release(self, instance: str, session: Optional[str] = None) -> None:
        """Stop forwarding a job (a disconnect): it runs on, its spool keeps what it writes.
        With ``session``: let go of that session (it outlives the kernel)."""
        self.write_acks()
        if session:
            let_go(self.session_dir(str(session)), self.owner)
            if not instance:
                return
        self.detached.add(instance)
        job = self.jobs.get(instance)
        if job is not None:
            self.jobs.drop(job)
        try:
            os.unlink(os.path.join(self.spool_of(instance), "owner"))
        except OSError:
            pass

    # -- sessions: lasting interpreters ------------------------------------------------------
    def session_dir(self, session: str) -> str:
        return sessions.session_dir(self.sessions_dir, session)

    def session_status(self, session: str) -> Dict[str, Any]:
        return sessions.session_status(self.session_dir(session), session)

    def session_new(self, header: Dict[str, Any]) -> None:
        session = str(header["session"])
        path = self.session_dir(session)
        sessions.make_session_dir(path, header)
        spare = Spare(session_dir=path)
        spare.discard()  # the session reads its requests from its queue, not from the server
        sessions.record_pid(path, spare.pid)
        write_private(os.path.join(path, "owner"), self.owner)  # it ends with the kernel, unless disconnected
        self.send(dict(self.session_status(session), op=SESSION_STATE))

    def session_attach(self, session: str) -> None:
        """A kernel follows this session (again): it is its session now, ended with it unless disconnected."""
        status = self.session_status(session)
        if status["state"] != "Gone":
            write_private(os.path.join(self.session_dir(session), "owner"), self.owner)
        self.send(dict(status, op=SESSION_STATE))

    def session_run(self, header: Dict[str, Any], buffers: List[bytearray]) -> None:
        """Queue a job in its session; it is forwarded like any job, from its own spool."""
        session = str(header["session"])
        path = self.session_dir(session)
        status = self.session_status(session)
        if status["state"] != "Opened":
            self.send({"op": FAILED, "job": header.get("job"), "error": f"the session is {status['state'].lower()}: {status['reason']}"})
            return
        spool = self.make_spool(header)
        self.request_counter += 1
        name = f"{time.time():017.6f}-{self.request_counter:06d}-{header['job']}"
        sessions.queue_request(path, name, dict(header, spool=spool), buffers)
        sup = read_json(os.path.join(path, "pid")) or {}
        job = HostJob(str(header["job"]), spool, int(sup.get("pid", 0)), sup.get("start"), header.get("cache", "kernel"))
        job.session = session
        self.jobs.track(job)

    def unqueue(self, job: HostJob) -> bool:
        assert job.session is not None
        return sessions.unqueue(self.session_dir(job.session), job.instance, job.scanner.path)

    def session_close(self, session: str) -> None:
        sessions.close_session(self.session_dir(session))
        self.send({"op": SESSION_STATE, "session": session, "state": "Closed", "reason": ""})


def _failed(header: Dict[str, Any], error: str) -> Dict[str, Any]:
    """The answer to a request that failed: for its job, or, for a session request, naming the
    session (the kernel waits for that answer: it must not wait for one that never comes)."""
    failed = {"op": FAILED, "job": header.get("job"), "for": header.get("op"), "error": error}
    if header.get("op") in (SESSION_NEW, SESSION_ATTACH, SESSION_CLOSE, LIST):
        failed["session"] = str(header.get("session") or "")
    return failed


def _os_error_text(exc: OSError, root: str) -> str:
    if exc.errno == errno.ENOSPC:
        return f"no space left on the host's disk (writing under {root}); free some space there"
    return f"{type(exc).__name__}: {exc}"


def _provide_package_stub() -> None:
    """Jobs' `from jupyter_rjobs import progress, display` reach this agent's capture: on a host
    without jupyter_rjobs a stub package gives them; where jupyter_rjobs is installed too (this
    machine's local agent, a host that has it) its ``jupyter_rjobs.agent.capture`` is this agent's
    own module (else a job's progress would go to a second copy that captures nothing)."""
    import importlib.util

    from . import capture

    if importlib.util.find_spec("jupyter_rjobs") is None:
        stub = types.ModuleType("jupyter_rjobs")
        stub.progress = progress  # type: ignore[attr-defined]
        stub.display = display  # type: ignore[attr-defined]
        sys.modules["jupyter_rjobs"] = stub
    elif __package__ != "jupyter_rjobs.agent":  # the agent's zip (rjobs_agent), not the installed package
        sys.modules.setdefault("jupyter_rjobs.agent.capture", capture)


def serve_main(root: str, orphan_grace: Optional[float] = None) -> None:
    """One per SSH connection: runs jobs as detached processes and forwards their spools.
    ``orphan_grace``: see :mod:`.orphan` (None: the kernel's work is never ended for it)."""
    os.umask(0o077)
    import ctypes  # noqa: F401 - imported once here, not in every forked supervisor

    _provide_package_stub()
    Server(root, orphan_grace).loop()
