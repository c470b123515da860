"""Handing a server's jobs to its warm pairs (:mod:`.supervisor`): a job takes a free pair at
once; while none is free it waits, in order, and once no pair has come free for HAND_WAIT, one
more pair is forked. So a burst of quick jobs runs in a few warm processes, and a job never
waits long behind others that run on."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Set, Tuple

from .forward import Forwarder, HostJob
from .spool import NO_PROCESS, end_records, ended_records, write_over
from .supervisor import Spare

# seconds: while no pair is free and none came free for this long, a waiting job gets a new one
# ($JUPYTER_RJOBS_HAND_WAIT where the server starts: the local agent inherits the kernel's)
HAND_WAIT = float(os.environ.get("JUPYTER_RJOBS_HAND_WAIT") or 0.003)
FINISHING_WAIT = 0.05  # ... unless a pair has just ended its job: it says READY in a moment

Waiting = Tuple[Dict[str, Any], List[bytearray], str]  # a job waiting for a pair: its request, buffers, spool


class Dispatcher:
    """The jobs waiting for a pair, and handing them over."""

    def __init__(self, jobs: Forwarder, detached: Set[str]) -> None:
        self.jobs = jobs
        self.detached = detached  # the server's: a detached job's pair is its own
        self.waiting: "OrderedDict[str, Waiting]" = OrderedDict()
        self.progress = (0, time.monotonic())  # (how often pairs came free, when that last changed or a pair was forked)

    def submit(self, instance: str, header: Dict[str, Any], buffers: List[bytearray], spool: str) -> None:
        if not self.waiting:  # the wait for a pair starts now
            self.progress = (self.jobs.freed, time.monotonic())
        self.waiting[instance] = (header, buffers, spool)
        self.dispatch()

    def dispatch(self, force: bool = False) -> None:
        """Hand waiting jobs to free pairs, in order. While none is free and none came free for
        HAND_WAIT (or, at most FINISHING_WAIT, while a pair's job has ended and it has yet to say
        READY), fork one more; at once if no pair runs a job (``force``: one for each that waits)."""
        if self.jobs.freed != self.progress[0]:
            self.progress = (self.jobs.freed, time.monotonic())
        while self.waiting:
            pair = self.jobs.take_free()
            if pair is None:
                waited = time.monotonic() - self.progress[1]
                if not force and self.busy() and (waited < HAND_WAIT or (waited < FINISHING_WAIT and self.finishing())):
                    return
                pair = self.jobs.fork_pair()
                self.progress = (self.jobs.freed, time.monotonic())
            instance, (header, buffers, spool) = self.waiting.popitem(last=False)
            self.hand(pair, instance, header, buffers, spool)

    def start(self, instance: str, header: Dict[str, Any], buffers: List[bytearray], make_spool: Callable[[bytes], str]) -> None:
        """Start a job: a free pair takes it at once, unless jobs wait before it (they go first,
        in order), and its spool is made with that pair's pid already in it; else it waits.
        ``make_spool(pid)`` makes the job's spool (a failure leaves the pair free)."""
        pair = None if self.waiting else self.jobs.take_free()
        try:
            spool = make_spool(pair.pid_json() if pair is not None else NO_PROCESS)
        except BaseException:
            if pair is not None:
                self.jobs.free.append(pair)  # it runs no job: still free
            raise
        if header.get("detached"):
            self.detached.add(instance)
        if pair is None:
            self.submit(instance, header, buffers, spool)
        else:
            self.hand(pair, instance, header, buffers, spool, pid_written=True)

    def hand(self, pair: Spare, instance: str, header: Dict[str, Any], buffers: List[bytearray], spool: str,
             pid_written: bool = False) -> None:
        """Give a pair its job (a detached job's pair ends with it: nothing of it waits on us).
        ``pid_written``: the spool's pid file names this pair already."""
        try:
            pair.hand(spool, header, buffers, last=instance in self.detached)
        except OSError:  # the pair died while it waited: fork one now
            self.jobs.forget_pair(pair)
            pair = self.jobs.fork_pair()
            pair.hand(spool, header, buffers, last=instance in self.detached)
            pid_written = False
        if not pid_written:
            write_over(os.path.join(spool, "pid"), pair.pid_json())
        self.jobs.track(HostJob(instance, spool, pair.pid, pair.start, header.get("cache", "kernel"), pair))

    def busy(self) -> bool:
        """Whether some pair runs a job (one that may come free: else there is nothing to wait for)."""
        return any(pair.open and pair.job is not None for pair in self.jobs.pairs.values())

    def finishing(self) -> bool:
        """Whether some pair's job has ended and the pair will say READY in a moment."""
        return any(pair.open and pair.job is not None and not pair.ready and pair.job.scanner.final is not None
                   for pair in self.jobs.pairs.values())

    def replenish(self) -> None:
        """At a quiet moment: fork a pair ahead of time, so a run request only hands it the job."""
        if not self.jobs.free and not self.waiting:
            self.jobs.free.append(self.jobs.fork_pair())

    def stop_waiting(self, instance: str) -> bool:
        """Stop a job that waits for a pair: it ends saying so (False: it does not wait)."""
        if instance not in self.waiting:
            return False
        header, _, spool = self.waiting.pop(instance)
        end_records(os.path.join(spool, "records"), ended_records(None, True, "worker", spool), instance)
        self.jobs.track(HostJob(instance, spool, 0, None, header.get("cache", "kernel")))
        return True
