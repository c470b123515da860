"""Following the jobs a host server forwards: each job's spool goes to the kernel as it grows
(the frames themselves, a big one while it is being written (:mod:`.stream`), or for a
remote-cache job only notices, states and errors); a job
asked to stop is killed once its grace has passed; a job that ended without saying how gets
its end written for it."""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .proctree import alive
from .protocol import GONE, KIND_ERROR, KIND_STATE, NOTICE, RECORD
from .spool import NO_SPACE_EXIT, READY, SPOOL_WRITE_EXIT, Scanner, end_records, ended_records
from .stream import STREAM_MIN, FrameTail, stream_frame
from .supervisor import Spare

MAX_FREE = 4  # warm pairs kept waiting for jobs; more that come free are let go
MAX_ENDED = 4096  # ended jobs remembered after they are no longer followed (see Forwarder.ended)

Send = Callable[[Dict[str, Any], Sequence[Any]], None]


class HostJob:
    """A job the server forwards: run by one of its pairs, or adopted (by its spool), or a session's."""

    def __init__(self, instance: str, spool: str, pid: int, start: Optional[int], cache: str, pair: Optional[Spare] = None) -> None:
        self.instance = instance
        self.spool = spool
        self.pid = pid  # its supervisor (a session's, for a session job)
        self.start = start
        self.pair = pair  # the pair that runs it, whose notify pipe wakes us; None: its spool is watched
        self.cache = cache
        self.scanner = Scanner(os.path.join(spool, "records"))
        self.skip_upto = 0  # the kernel has these already
        self.adopted = pair is None
        self.session: Optional[str] = None
        self.stopping = False
        self.kill_at: Optional[float] = None
        self.exit_status: Optional[int] = None
        self.ended = False
        self.void_at = -1  # the spool offset of a frame whose stream was void: it goes whole


class Forwarder:
    """The jobs one server forwards, by instance, and the pairs that run them (its children, by
    pid): busy, or free (warm, waiting for a job)."""

    def __init__(self, send: Send, out_fd: int, selector: selectors.BaseSelector) -> None:
        self._send = send
        self._out_fd = out_fd
        self._selector = selector
        self.jobs: Dict[str, HostJob] = {}
        self.adopted: Dict[str, HostJob] = {}  # the jobs no pair's pipe wakes us for: their spools are watched
        # jobs no longer followed whose end was written (nothing writes to their spools): the
        # latest MAX_ENDED, so that their spools can serve new jobs once the kernel cleans them
        self.ended: "OrderedDict[str, bool]" = OrderedDict()
        self.pair_ended = False  # a pair's notify pipe ended: reap it now (else at the next sweep)
        self.pairs: Dict[int, Spare] = {}  # every pair of ours that has not ended, by supervisor pid
        self.free: List[Spare] = []  # pairs waiting for a job (the last one is taken first)
        self.freed = 0  # how many times a pair came free (the server sees whether jobs move)
        self.quiet = True  # nothing happened in the last turn: a good moment to fork a spare

    def get(self, instance: str) -> Optional[HostJob]:
        return self.jobs.get(instance)

    def track(self, job: HostJob) -> None:
        self.jobs[job.instance] = job
        if job.adopted:
            self.adopted[job.instance] = job
        pair = job.pair
        if pair is not None:
            pair.job = job
            self.add_pair(pair)

    def fork_pair(self) -> Spare:
        """A new pair, followed from now on."""
        pair = Spare()
        self.add_pair(pair)
        return pair

    def add_pair(self, pair: Spare) -> None:
        """Follow a pair's notify pipe (once, for every job it runs)."""
        if pair.pid not in self.pairs:
            self.pairs[pair.pid] = pair
            self._selector.register(pair.notify_fd, selectors.EVENT_READ, pair)

    def take_free(self) -> Optional[Spare]:
        """A warm pair for the next job, if one waits."""
        while self.free:
            pair = self.free.pop()  # the most recently used: its memory is warmest
            if pair.open and pair.pid in self.pairs:
                return pair
        return None

    def woken(self, pair: Spare) -> None:
        """A pair's notify pipe says its job wrote records, or that it is ready for the next."""
        try:
            said = os.read(pair.notify_fd, 65536)
        except OSError:
            said = b""
        if not said:
            self.pair_ended = True  # its processes are gone (they hold the pipe's other end)
        job = pair.job
        if job is not None and job.instance in self.jobs:
            self.forward(job)
        if READY in said:
            pair.ready = True
        self.free_if_done(pair)

    def free_if_done(self, pair: Spare) -> None:
        """A pair that said READY after its job, whose end was forwarded, takes another."""
        if pair.ready and pair.job is not None and (pair.job.instance not in self.jobs or pair.job.scanner.final is not None):
            pair.job = None  # its job ended (and was forwarded): the pair takes another
            self.freed += 1
            if pair.open and len(self.free) < MAX_FREE:
                self.free.append(pair)
            else:
                pair.let_go()

    def follow_adopted(self) -> None:
        for job in list(self.adopted.values()):
            self.forward(job)  # no pipe wakes us for these: their spools are watched

    def sweep(self) -> None:
        for job in list(self.jobs.values()):
            self.forward(job)
            self.settle(job)

    def reap_children(self) -> None:
        """Collect every child that ended (also those already cleaned), so none stays a zombie."""
        self.pair_ended = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            pair = self.pairs.get(pid)
            if pair is None:
                continue  # a pair let go of before it ended
            job = pair.job  # the job it ran when it ended (None: it waited for one)
            self.forget_pair(pair)
            if job is not None:
                job.exit_status = status
                job.ended = True
                self.settle(job)

    def forward(self, job: HostJob) -> None:
        """Send the kernel what the job's spool has gained: the frames themselves (consecutive ones
        in one sendfile; a big one while it is being written), or for a remote-cache job only
        notices, states and errors."""
        while self._forward_whole(job) and self._stream(job):
            pass  # a streamed frame was finished: what follows it is next
        if job.pair is not None and job.pair.job is job:
            self.free_if_done(job.pair)  # its READY may have come while its frame streamed
        if job.scanner.final is not None:
            self.quiet = True  # its end is on the way to the kernel: a good moment to fork the next spare

    def _forward_whole(self, job: HostJob) -> bool:
        """Send the whole frames there are; True if the job is still followed (not corrupt)."""
        pending: Optional[List[int]] = None  # a run of frames to copy: [start, end]
        while True:
            try:
                found = job.scanner.next()
            except ValueError:  # not a frame: send what came before it, then how the job ended
                if pending is not None:
                    job.scanner.copy(self._out_fd, *pending)
                self.corrupt(job)
                return False
            if found is None:
                break
            header, start, end = found
            seq = header.get("seq", 0)
            if seq > job.skip_upto and (job.cache == "kernel" or header.get("kind") in (KIND_STATE, KIND_ERROR)):
                if pending is not None and pending[1] == start:
                    pending[1] = end
                else:
                    if pending is not None:
                        job.scanner.copy(self._out_fd, *pending)
                    pending = [start, end]
            else:
                if pending is not None:
                    job.scanner.copy(self._out_fd, *pending)
                    pending = None
                if seq > job.skip_upto:
                    self._send({"op": NOTICE, "job": job.instance, "seq": seq, "kind": header.get("kind")}, ())
        if pending is not None:
            job.scanner.copy(self._out_fd, *pending)
        return True

    def _stream(self, job: HostJob) -> bool:
        """Stream the frame being written at the scanner's offset if it is big (a kernel-cache job
        of this server, with a pipe that says when it writes); True if it was sent whole."""
        scanner, pair = job.scanner, job.pair
        fd = scanner.fd()
        if job.cache != "kernel" or pair is None or pair.job is not job or pair.notify_fd < 0 or fd is None or scanner.offset == job.void_at:
            return False
        tail = FrameTail(fd, scanner.offset)
        try:
            safe = tail.safe_end(os.fstat(fd).st_size)
        except ValueError:
            return False  # not a frame: the scanner says so
        if tail.header is None or safe - tail.start < STREAM_MIN or tail.header.get("seq", 0) <= job.skip_upto:
            return False
        def heard(said: bytes) -> None:
            if READY in said:
                pair.ready = True  # its job is done (its end follows the frame): it waits for the next

        if not stream_frame(self._out_fd, self._send, tail, job.instance, pair.notify_fd, heard):
            job.void_at = tail.start
            return False
        found = scanner.next()  # the frame just sent: the scanner goes past it
        assert found is not None and found[2] == tail.end, "a streamed frame is not the one in the spool"
        return True

    def settle(self, job: HostJob) -> None:
        """Kill a stopped job whose grace has passed; once it has ended, make sure its spool says how."""
        if not job.ended:
            if job.scanner.final is not None:
                job.ended = True  # its spool says how it ended (a supervisor exits soon after)
            elif job.adopted and not alive(job.pid, job.start):
                job.ended = True  # not our child: its supervisor is gone, and with it the job
        if not job.ended:
            if job.kill_at is not None and time.monotonic() >= job.kill_at:
                os.kill(job.pid, signal.SIGUSR1)  # the supervisor kills the job's whole tree
                job.kill_at = None
            if job.scanner.final is None and not os.path.isdir(job.spool):
                self._send({"op": GONE, "job": job.instance}, ())
                self.drop(job)
            return
        if job.instance not in self.jobs:
            return
        self.forward(job)  # whatever it wrote before it ended
        if job.instance not in self.jobs:
            return  # its spool was corrupt: said and dropped
        if job.scanner.final is None and job.scanner.torn() and not _spool_write_failed(job.exit_status):
            self.corrupt(job, torn=True)  # its writers are gone and its last frame is cut short
            return
        if job.scanner.final is None:
            self.finish_for(job)
            self.forward(job)
        self.drop(job)

    def corrupt(self, job: HostJob, torn: bool = False) -> None:
        """The job's spool holds bytes that are not a frame: everything before them was sent; the
        job fails saying where (its process, if any, is stopped: its output could not be read)."""
        self._send_records(job, job.scanner.corrupt_records(torn))
        if not job.ended and alive(job.pid, job.start) and not job.session:
            try:
                os.kill(job.pid, signal.SIGTERM)  # its supervisor stops the job's tree
            except OSError:
                pass
        self.drop(job)

    def cleaned(self, instance: str) -> bool:
        """The kernel cleaned a job: stop following it (its pair, if any, is still reaped by
        reap_children). Whether its spool has its end written, so nothing writes to it any more
        (a job followed until now, or one that ended a while ago)."""
        job = self.jobs.get(instance)
        if job is None:
            return self.ended.pop(instance, False)
        self._forget(job)
        return _written_to_end(job)

    def drop(self, job: HostJob) -> None:
        """Forget a job here (its spool stays; its pair, if any, goes on with it); one whose end
        is written is remembered, for when the kernel cleans it."""
        self._forget(job)
        if _written_to_end(job):
            self.ended[job.instance] = True
            if len(self.ended) > MAX_ENDED:
                self.ended.popitem(last=False)

    def _forget(self, job: HostJob) -> None:
        self.jobs.pop(job.instance, None)
        self.adopted.pop(job.instance, None)
        job.scanner.close()

    def forget_pair(self, pair: Spare) -> None:
        """A pair that ended (or died before it took its job): its pipes are closed."""
        self.pairs.pop(pair.pid, None)
        if pair in self.free:
            self.free.remove(pair)
        try:
            self._selector.unregister(pair.notify_fd)
        except (KeyError, ValueError):
            pass
        pair.discard()

    def let_go_all(self) -> None:
        """The server is going: every pair ends once its job has (a free one at once)."""
        for pair in list(self.pairs.values()):
            pair.let_go()
        for pair in list(self.free):
            self.forget_pair(pair)

    def finish_for(self, job: HostJob) -> None:
        """The job and its supervisor died without saying how it ended: say it for them."""
        what = "the session's interpreter" if job.session else "worker"
        records = ended_records(job.exit_status, job.stopping, what, job.spool)
        try:
            end_records(job.scanner.path, records, job.instance)
        except OSError:  # no room to write it (or no spool): tell the kernel directly
            self._send_records(job, records)

    def _send_records(self, job: HostJob, records: Sequence[Tuple[str, Any]]) -> None:
        """Send a job's last records straight to the kernel (its spool cannot take them)."""
        seq = job.scanner.last_seq
        for kind, data in records:
            seq += 1
            self._send({"op": RECORD, "job": job.instance, "seq": seq, "kind": kind, "time": time.time(), "data": data}, ())
        job.scanner.last_seq = seq
        job.scanner.final = str(records[-1][1])


def _written_to_end(job: HostJob) -> bool:
    """Whether a job's spool ends with its end (not one said only to the kernel: a corrupt spool)."""
    return job.scanner.final is not None and job.scanner.corrupt is None


def _spool_write_failed(status: Optional[int]) -> bool:
    """Whether a job (or its supervisor) exited because its spool could not be written (a full
    disk): its torn last frame is its own failed write, cut and said by ``finish_for``, not corruption."""
    return status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) in (NO_SPACE_EXIT, SPOOL_WRITE_EXIT)
