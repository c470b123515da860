"""Following jobs' record streams until they end: the loop behind ``JobManager.follow`` and
``receive(wait=True)``. Writers wake it through the manager's activity condition."""

from __future__ import annotations

import threading
import time
from typing import Iterator

from jupyter_rjobs.core.job import Job
from jupyter_rjobs.core.records import Record

__all__ = ["follow_streams"]


def follow_streams(leaves: list[Job], keep: bool, timeout: float | None, activity: threading.Condition) -> Iterator[Record]:
    """Yield the leaves' records as they arrive, until every stream has ended (or ``timeout``).

    A stream seen closed before a take is done after that take: nothing is appended after the
    close. A stream is taken from only when it has news, so a job just started costs no take.
    """
    seen = {leaf.id: 0 for leaf in leaves}
    deadline = None if timeout is None else time.monotonic() + timeout
    while leaves:
        progressed, still_open = False, []
        for leaf in leaves:
            stream = leaf.stream  # read each round: a backend may give a job its own stream at launch
            ended = stream.closed
            if ended or stream.has_after(seen[leaf.id]):
                for record in stream.iter_take(after=seen[leaf.id], keep=keep):  # a remote spool a part at a time
                    seen[leaf.id] = record.seq
                    progressed = True
                    yield record
            if not ended:
                still_open.append(leaf)
        leaves = still_open
        if progressed or not leaves:
            continue
        with activity:
            if _any_news(leaves, seen):
                continue  # taken in the next round
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            activity.wait(0.25 if remaining is None else min(remaining, 0.25))


def _any_news(leaves: list[Job], seen: dict[int, int]) -> bool:
    """Whether a stream has a record above what was seen of it, or has ended."""
    for leaf in leaves:
        stream = leaf.stream
        if stream.closed or stream.has_after(seen[leaf.id]):
            return True
    return False
