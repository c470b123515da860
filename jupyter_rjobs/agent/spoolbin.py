"""What a host server does with the spools of removed jobs: each is renamed out of sight at
once (never listed), and at a quiet moment either made ready for a new job (see
:func:`.spool.recycle_spool`) or deleted. Making and deleting a spool's directory and files
costs far more than reusing one on a journaled disk; a new job's spool is a ready one, renamed,
when there is one. The ready ones go when the server does; a killed server's are deleted by
the next one that starts."""

from __future__ import annotations

import errno
import os
from typing import Callable, List, Optional

from .spool import recycle_spool, remove_spool

TRASH = ".removed-"  # a removed spool's name until its files are deleted or it is ready again (never listed)
MAX_READY = 1024  # ready spools kept for new jobs while the server runs (about 16 KiB of disk each)


class SpoolBin:
    """One server's removed spools: to delete, to make ready, and ready."""

    def __init__(self, jobs_dir: str) -> None:
        self.jobs_dir = jobs_dir
        self.trash: List[str] = []  # to delete
        self.reusable: List[str] = []  # of jobs whose end was written: nothing writes to them any more
        self.ready: List[str] = []  # made ready for new jobs
        self.made = 0

    @property
    def pending(self) -> bool:
        """Whether removed spools wait to be made ready or deleted (a quiet moment does some)."""
        return bool(self.reusable or self.trash)

    def collect_left_behind(self) -> None:
        """Take the removed spools of servers that are gone (killed), to delete them."""
        self.trash = [os.path.join(self.jobs_dir, name) for name in os.listdir(self.jobs_dir) if _left_behind(name)]

    def put(self, spool: str, instance: str, reusable: bool) -> None:
        """Take a job's spool out of sight at once; ``reusable``: its end is written."""
        removed = os.path.join(self.jobs_dir, f"{TRASH}{os.getpid()}-{instance}")
        try:
            os.rename(spool, removed)
        except FileNotFoundError:
            return
        (self.reusable if reusable else self.trash).append(removed)

    def take(self, spool: str, fill: Callable[[str], None]) -> bool:
        """Make ``spool`` of a ready one, ``fill`` (its meta.json, owner and pid) written before
        it appears under the job's name; False if none is ready (make a new one)."""
        while self.ready:
            if os.path.lexists(spool):
                raise FileExistsError(errno.EEXIST, "a job spool of that id exists", spool)
            ready = self.ready.pop()
            try:
                fill(ready)
                os.rename(ready, spool)
            except OSError:
                continue  # deleted meanwhile: try the next
            return True
        return False

    def empty(self, limit: Optional[int] = None) -> None:
        """Make removed spools ready, up to MAX_READY, and delete the rest (``limit``: at most
        that many now; None: the server ends, so the ready ones go too)."""
        while (self.reusable or self.trash) and (limit is None or limit > 0):
            if self.reusable:
                spool = self.reusable.pop()
                if limit is not None and len(self.ready) < MAX_READY and self._make_ready(spool):
                    limit -= 1
                    continue
            else:
                spool = self.trash.pop()
            remove_spool(spool)
            limit = None if limit is None else limit - 1
        if limit is None:
            while self.ready:
                remove_spool(self.ready.pop())

    def _make_ready(self, spool: str) -> bool:
        self.made += 1
        ready = os.path.join(self.jobs_dir, f"{TRASH}free-{os.getpid()}-{self.made}")
        if not recycle_spool(spool, ready):
            return False
        self.ready.append(ready)
        return True


def _left_behind(name: str) -> bool:
    """Whether a removed spool (``.removed-PID-...``, or ready: ``.removed-free-PID-...``) was
    left by a server that is gone: a live one's are its own to delete or use."""
    if not name.startswith(TRASH):
        return False
    pid = name[len(TRASH):].replace("free-", "", 1).split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        pass
    return False
