"""What a job card shows of a job's output: the last lines, a look that is not a receive.

:class:`Tail` is fed records (those already in the kernel, read with ``Job.peek``, then each new
one from the manager's events) and keeps only the last ``lines`` lines, stdout and stderr as they
came, a display as a one-line note, a fan-out child's lines labelled with its host. It never
touches the job's stream: ``receive`` still returns everything. Plain Python: no widgets here.
"""

from __future__ import annotations

import html
import reprlib
import threading
from collections import deque
from typing import Any, Iterable

from jupyter_rjobs.core.job import Job, JobState
from jupyter_rjobs.core.records import Record, RecordKind

__all__ = ["MAX_CHARS", "Tail", "outcome_text"]

MAX_CHARS = 300  # characters of one tail line that are shown (the whole line stays in the job)
_TEXT = {RecordKind.STDOUT: False, RecordKind.STDERR: True}  # kind -> is stderr


class Tail:
    """The last ``lines`` lines of output of a job (or of a fan-out job's children). Thread-safe."""

    def __init__(self, lines: int, labels: dict[int, str] | None = None) -> None:
        self.lines: deque[tuple[str, bool]] = deque(maxlen=max(0, lines))
        self._labels = labels or {}  # a child's id -> its host, for a fan-out job
        self._partial: dict[tuple[int, bool], str] = {}
        self._seen: dict[int, int] = {}  # job id -> the last record number taken in
        self._lock = threading.Lock()
        self._held: list[Record] | None = []  # records fed before ``prime``: taken in after what it is given

    def prime(self, records: Iterable[Record]) -> None:
        """Take in the records the job had before the card listened (``Job.peek``), then those fed
        meanwhile, in order and each once, whichever came first."""
        with self._lock:  # one step: a record fed meanwhile waits, then comes after these
            held, self._held = self._held or [], None
            self._take_in(sorted([*records, *held], key=lambda r: (r.job_id, r.seq)))

    def feed(self, records: Iterable[Record]) -> bool:
        """Take in records (each one once: a record seen already is skipped); whether anything shown changed."""
        with self._lock:
            if self._held is not None:
                self._held.extend(records)
                return False
            return self._take_in(records)

    def _take_in(self, records: Iterable[Record]) -> bool:
        changed = False
        for record in records:
            if record.seq <= self._seen.get(record.job_id, 0):
                continue
            self._seen[record.job_id] = record.seq
            changed = self._take(record) or changed
        return changed

    def _take(self, record: Record) -> bool:
        is_err = _TEXT.get(record.kind)
        if is_err is not None:
            self._text(record.job_id, str(record.data), is_err)
            return True
        if record.kind is RecordKind.DISPLAY:
            data = (record.data or {}).get("data") or {}
            text = str(data.get("text/plain", "")).strip().splitlines()
            what = text[0] if text else ", ".join(sorted(data)) or "nothing"
            self._line(record.job_id, f"[display: {what}]", False)
            return True
        return False

    def _text(self, job_id: int, text: str, is_err: bool) -> None:
        key = (job_id, is_err)
        text = self._partial.pop(key, "") + text.replace("\r\n", "\n")
        *whole, rest = text.split("\n")
        for line in whole:
            self._line(job_id, _last_overwrite(line), is_err)
        if rest:
            self._partial[key] = rest[-4 * MAX_CHARS :]  # a progress bar redraws one line with \r

    def _line(self, job_id: int, line: str, is_err: bool) -> None:
        label = self._labels.get(job_id)
        line = f"[{label}] {line}" if label else line
        self.lines.append((line[:MAX_CHARS] + ("…" if len(line) > MAX_CHARS else ""), is_err))

    def snapshot(self) -> list[tuple[str, bool]]:
        """The lines to show, oldest first: the complete ones, then any line still being written."""
        with self._lock:
            shown = list(self.lines)
            for (job_id, is_err), rest in self._partial.items():
                label = self._labels.get(job_id)
                text = _last_overwrite(rest)[:MAX_CHARS]
                if text:
                    shown.append((f"[{label}] {text}" if label else text, is_err))
        limit = self.lines.maxlen or 0
        return shown[-limit:] if limit else []

    def html(self) -> str:
        lines = self.snapshot()
        if not lines:
            return ""
        body = "\n".join(
            f"<span class='rjob-card-err'>{html.escape(text)}</span>" if is_err else html.escape(text) for text, is_err in lines
        )
        return f"<pre class='rjob-card-tail'>{body}</pre>"


def _last_overwrite(line: str) -> str:
    """What a terminal shows of a line redrawn with carriage returns: its last non-empty part."""
    if "\r" not in line:
        return line
    parts = [part for part in line.split("\r") if part]
    return parts[-1] if parts else ""


_short = reprlib.Repr()
_short.maxstring = 80
_short.maxother = 80
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 6


def outcome_text(job: Job) -> str:
    """A finished job in one line: the value's short repr, the error's one-line summary, or why it stopped."""
    state = job.state
    if state is JobState.Completed:
        try:
            value: Any = job.result(timeout=0)
        except Exception as exc:  # noqa: BLE001 - a value that cannot be had is said, not raised
            return f"value unavailable: {type(exc).__name__}"
        return "" if value is None else f"value: {_short.repr(value)}"
    if state is JobState.Failed and job.error is not None:
        evalue = str(job.error.evalue).strip().splitlines()
        return f"{job.error.ename}: {evalue[0] if evalue else ''}"[:MAX_CHARS]
    return job.reason[:MAX_CHARS] if job.reason else ""
