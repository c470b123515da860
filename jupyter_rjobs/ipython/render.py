"""One renderer of records: turns a job's records into what the user sees, wherever that is.

:class:`Renderer` is the policy, the same everywhere: a label line between jobs, text as it
came, display data as rich output, errors as tracebacks, progress as a line (while streaming
at most once per ``PROGRESS_INTERVAL`` a job, else the latest at the end), values collected or
shown. It also caps what is *rendered*, never what is kept: a line longer than ``max_line``
characters, or a display larger than ``max_display``, is shown cut, followed by one note line
saying how much was cut and where all of it is. Records are never changed.

A *target* is where the outputs go; each gets nbformat-shaped calls (``stream``, ``display``,
``error``, ``flush``) and knows nothing of records:

- :class:`CellTarget`: the current cell (stdout/stderr, IPython's display and tracebacks);
- :class:`OutputTarget`: an ipywidgets ``Output`` (the panel's);
- :class:`TextTarget`: a terminal or any text stream.

IPython is imported lazily (only :class:`CellTarget` needs it); ipywidgets never is.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import IO, Any, Callable, Protocol

from jupyter_rjobs.core.errors import _ANSI_ESCAPE
from jupyter_rjobs.core.job import Job
from jupyter_rjobs.core.records import Record, RecordKind

__all__ = [
    "MAX_DISPLAY",
    "MAX_LINE",
    "CellRenderer",
    "CellTarget",
    "OutputTarget",
    "Renderer",
    "Target",
    "TextTarget",
    "render_records",
]

MAX_LINE = 20_000  # characters of one line that are shown; "\n" or "\r" ends a line
MAX_DISPLAY = 4_000_000  # characters of one display's data (all its formats) that are shown
CUT_NAME = "_rjob_cut"  # the variable that holds, whole, what the last rendering cut

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)?")
_STREAMS = {RecordKind.STDOUT: "stdout", RecordKind.STDERR: "stderr"}  # (module constants: the hot path)
_VALUE, _DISPLAY, _PROGRESS, _ERROR = RecordKind.VALUE, RecordKind.DISPLAY, RecordKind.PROGRESS, RecordKind.ERROR


class Target(Protocol):
    """Where rendered outputs go."""

    def stream(self, name: str, text: str) -> None:
        """Text on ``name`` ("stdout" or "stderr")."""

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Rich output: a mime bundle."""

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        """A traceback (its lines may carry ANSI colours)."""

    def flush(self) -> None:
        """Everything so far is visible."""


class _Line:
    """The open line of one stream of one job: characters shown, characters cut, its parts."""

    __slots__ = ("cut", "parts", "shown")

    def __init__(self) -> None:
        self.shown = 0
        self.cut = 0
        self.parts: list[str] = []  # while nothing is cut at most max_line characters


class Renderer:
    """Shows records through a target: text, rich output, tracebacks, progress lines;
    values are collected in ``values`` (and shown too with ``show_values``). What was cut
    is in ``cut``, whole, and in ``namespace[CUT_NAME]`` when a namespace is given."""

    PROGRESS_INTERVAL = 0.5  # while streaming, at most one progress line a job per this many seconds

    def __init__(
        self,
        target: Target,
        jobs: Iterable[Job] = (),
        streaming: bool = False,
        *,
        show_values: bool = False,
        labelled: bool | None = None,
        max_line: int = MAX_LINE,
        max_display: int = MAX_DISPLAY,
        namespace: MutableMapping[str, Any] | None = None,
    ) -> None:
        self.target = target
        self.jobs = {job.id: job for job in jobs}
        self.labelled = len(self.jobs) > 1 if labelled is None else labelled
        self.streaming = streaming
        self.show_values = show_values
        self.max_line = max_line
        self.max_display = max_display
        self.namespace = namespace
        self.values: dict[int, Any] = {}
        self.cut: list[Any] = []  # whole: a line (str), a display's bundle, an error's data
        self._last_job: int | None = None
        self._lines: dict[tuple[int, str], _Line] = {}
        self._open_cuts: set[tuple[int, str]] = set()
        self._unshown_progress: dict[int, Record] = {}
        self._progress_shown_at: dict[int, float] = {}

    # -- records ----------------------------------------------------------------------
    def render(self, record: Record) -> None:
        """Show one record (a value is collected; shown too with ``show_values``)."""
        kind = record.kind
        if kind is _VALUE:
            self.values[record.job_id] = record.data
            if not self.show_values:
                return
        if self.labelled and record.job_id != self._last_job:
            self._label(record.job_id)
        stream = _STREAMS.get(kind)
        if stream is not None:
            self._stream(record.job_id, stream, str(record.data))
        elif kind is _DISPLAY:
            bundle = record.data or {}
            self._display(record.job_id, bundle.get("data") or {}, bundle.get("metadata") or {}, bundle)
        elif kind is _PROGRESS:
            self._unshown_progress[record.job_id] = record
            shown_at = self._progress_shown_at.get(record.job_id, 0.0)
            if self.streaming and record.time - shown_at >= self.PROGRESS_INTERVAL:
                self._show_progress(self._unshown_progress.pop(record.job_id))
        elif kind is _VALUE:
            from jupyter_rjobs.agent.capture import mime_bundle

            data, metadata = mime_bundle(record.data)
            self._display(record.job_id, data, metadata, record.data)
        elif kind is _ERROR:
            self._error(record.job_id, record.data or {})

    def _label(self, job_id: int) -> None:
        """The line that says whose output follows."""
        self._close_cuts()
        job = self.jobs.get(job_id)
        where = f" on {job.location}" if job is not None and job.parent is not None else ""
        self.target.stream("stdout", f"--- {job.label if job else job_id}{where} ---\n")
        self._last_job = job_id

    def finish(self) -> None:
        """Show the latest progress not shown yet, close lines that were cut, and flush."""
        for record in self._unshown_progress.values():
            self._show_progress(record)
        self._unshown_progress.clear()
        self._close_cuts()
        self.target.flush()

    # -- text and its cap ---------------------------------------------------------------
    def _stream(self, job_id: int, name: str, text: str) -> None:
        key = (job_id, name)
        if self._open_cuts and self._open_cuts != {key}:
            self._close_cuts(but=key)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line()
        if not line.cut and line.shown + len(text) <= self.max_line:  # the usual case: nothing can be over
            if text[-1:] == "\n":  # the usual of the usual: whole lines
                if line.shown:
                    line.shown = 0
                    line.parts = []
                self.target.stream(name, text)
                return
            end = max(text.rfind("\n"), text.rfind("\r"))
            if end < 0:
                line.shown += len(text)
                line.parts.append(text)
            else:
                line.shown = len(text) - end - 1
                line.parts = [text[end + 1 :]] if line.shown else []
            self.target.stream(name, text)
            return
        shown = self._clip_stream(job_id, line, text)
        if line.cut:
            self._open_cuts.add(key)
        else:
            self._open_cuts.discard(key)
        if shown:
            self.target.stream(name, shown)

    def _clip_stream(self, job_id: int, line: _Line, text: str) -> str:
        """``text`` as shown: each line at most ``max_line`` characters, a note after each cut one."""
        out: list[str] = []
        for match in _LINE.finditer(text):
            piece = match.group()
            if not piece:
                continue
            body = piece.rstrip("\r\n")
            ending = piece[len(body) :]
            room = max(0, self.max_line - line.shown)
            if line.cut or len(body) > room:
                out.append(body[:room])
                line.cut += len(body) - min(room, len(body))
                line.shown += min(room, len(body))
            else:
                out.append(body)
                line.shown += len(body)
            line.parts.append(body)
            if ending:
                if line.cut:
                    out.append("\n" if ending == "\r" else ending)
                    out.append(self._line_note(job_id, line) + "\n")
                else:
                    out.append(ending)
                line.shown, line.cut, line.parts = 0, 0, []
        return "".join(out)

    def _line_note(self, job_id: int, line: _Line) -> str:
        whole = "".join(line.parts)
        return self._note(job_id, whole, f"this line has {len(whole):,} characters; the first {line.shown:,} are shown")

    def _close_cuts(self, but: tuple[int, str] | None = None) -> None:
        """End the lines that were cut and are still open (something else is shown now, or the end)."""
        for key in sorted(self._open_cuts - {but} if but else self._open_cuts):
            line = self._lines.pop(key)
            self._open_cuts.discard(key)
            self.target.stream(key[1], "\n" + self._line_note(key[0], line) + "\n")

    def _note(self, job_id: int, whole: Any, said: str) -> str:
        """The one note line after a cut output; ``whole`` is kept in ``cut`` (and the namespace)."""
        index = len(self.cut)
        self.cut.append(whole)
        if self.namespace is not None:
            self.namespace[CUT_NAME] = self.cut
            where = f"all of it is in {CUT_NAME}[{index}]"
        else:
            where = f"the record itself is whole: JobManager.receive({job_id}, keep=True) returns it"
        return f"[jupyter_rjobs: {said}; {where}]"

    def _clip_text(self, job_id: int, text: str, whole: Any, what: str) -> tuple[str, bool]:
        """A text that is shown all at once (a traceback line, a message): each line capped, one note."""
        if len(text) <= self.max_line:
            return text, False
        lines = text.split("\n")
        longest = max(len(one) for one in lines)
        if longest <= self.max_line:
            return text, False
        shown = "\n".join(one[: self.max_line] for one in lines)
        return shown + "\n" + self._note(job_id, whole, f"{what} has a line of {longest:,} characters; the first {self.max_line:,} are shown"), True

    # -- everything else ----------------------------------------------------------------
    def _display(self, job_id: int, data: dict[str, Any], metadata: dict[str, Any], whole: Any) -> None:
        self._close_cuts()
        size = sum(len(value) if isinstance(value, (str, bytes)) else len(json.dumps(value, default=str)) for value in data.values())
        if size > self.max_display:
            text = str(data.get("text/plain", ""))[: self.max_line]
            note = self._note(job_id, whole, f"a display of {size:,} characters ({', '.join(data)}) is over the {self.max_display:,} shown")
            data, metadata = {"text/plain": (text + "\n" if text else "") + note}, {}
        elif isinstance(data.get("text/plain"), str):
            text, clipped = self._clip_text(job_id, data["text/plain"], whole, "its text")
            if clipped:
                data = {**data, "text/plain": text}
        self.target.display(data, metadata)

    def _error(self, job_id: int, data: dict[str, Any]) -> None:
        self._close_cuts()
        ename, evalue = str(data.get("ename", "Error")), str(data.get("evalue", ""))
        traceback = [str(line) for line in data.get("traceback") or []]
        if len(evalue) > self.max_line:
            evalue = evalue[: self.max_line] + f"… ({len(evalue) - self.max_line:,} more characters)"
        if any(len(line) > self.max_line for line in traceback):
            noted = False
            for index, line in enumerate(traceback):
                if noted:
                    traceback[index] = "\n".join(one[: self.max_line] for one in line.split("\n"))
                else:
                    traceback[index], noted = self._clip_text(job_id, line, data, "the traceback")
        self.target.error(ename, evalue, traceback)

    def _show_progress(self, record: Record) -> None:
        self._close_cuts()
        self._progress_shown_at[record.job_id] = record.time
        data: dict[str, Any] = record.data or {}
        current: Any = data.get("current")
        total: Any = data.get("total")
        try:
            amount = f"{100 * current / total:.0f}% ({current}/{total})" if total else f"{current}"
        except (TypeError, ValueError):
            amount = f"{current}/{total}"
        message = str(data.get("message", ""))[: self.max_line]
        self.target.stream("stdout", f"progress: {amount} {message}".rstrip() + "\n")


def render_records(records: Iterable[Record], renderer: Renderer) -> Renderer:
    """Render ``records`` in order, then finish; returns the renderer (its values, what it cut)."""
    try:
        for record in records:
            renderer.render(record)
    finally:
        renderer.finish()
    return renderer


# --------------------------------------------------------------------------- targets
class CellTarget:
    """The current cell: text to sys.stdout/sys.stderr, rich output through IPython's display,
    errors as IPython tracebacks (plain when the shell has no colours)."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self._last_stream: str | None = None

    def stream(self, name: str, text: str) -> None:
        if name != self._last_stream:
            self.flush()  # a kernel sends stdout and stderr apart: the order is kept by flushing at each switch
            self._last_stream = name
        (sys.stderr if name == "stderr" else sys.stdout).write(text)

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        from IPython.display import publish_display_data

        publish: Callable[..., None] = publish_display_data  # IPython has no type hints here
        self.flush()
        publish(data=data, metadata=metadata)

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        self.flush()
        if str(getattr(self.shell, "colors", "")).lower() == "nocolor":
            traceback = [_ANSI_ESCAPE.sub("", line) for line in traceback]
        show = getattr(self.shell, "_showtraceback", None)
        if show is None:
            sys.stderr.write("\n".join(traceback) + "\n")
            return
        show(type(ename, (Exception,), {}), evalue, list(traceback))

    def flush(self) -> None:
        self._last_stream = None
        sys.stdout.flush()
        sys.stderr.flush()


class OutputTarget:
    """An ipywidgets ``Output``: outputs are gathered (consecutive text of one stream merged) and
    appended to the widget in one update on ``flush`` (safe from any thread in ipykernel 6+)."""

    def __init__(self, output: Any, lock: threading.Lock | None = None) -> None:
        self.output = output
        self.lock = lock or threading.Lock()
        self.pending: list[dict[str, Any]] = []

    def stream(self, name: str, text: str) -> None:
        last = self.pending[-1] if self.pending else None
        if last is not None and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self.pending.append({"output_type": "stream", "name": name, "text": text})

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.pending.append({"output_type": "display_data", "data": data, "metadata": metadata})

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        self.pending.append({"output_type": "error", "ename": ename, "evalue": evalue, "traceback": traceback})

    def flush(self) -> None:
        outputs, self.pending = tuple(self.pending), []
        if outputs:
            with self.lock:
                self.output.outputs = self.output.outputs + outputs


class TextTarget:
    """A terminal or any text stream: display data as its text/plain (or a line naming its
    formats), tracebacks as text; ANSI colours kept only with ``color`` (default: a tty)."""

    def __init__(self, out: IO[str], err: IO[str] | None = None, color: bool | None = None) -> None:
        self.out = out
        self.err = err or out
        self.color = bool(getattr(out, "isatty", lambda: False)()) if color is None else color

    def stream(self, name: str, text: str) -> None:
        (self.err if name == "stderr" else self.out).write(text)

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        text = data.get("text/plain")
        self.out.write((str(text) if text is not None else f"[{', '.join(data)}: not shown as text]") + "\n")

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        lines = traceback or [f"{ename}: {evalue}"]
        text = "\n".join(lines) + "\n"
        self.err.write(text if self.color else _ANSI_ESCAPE.sub("", text))

    def flush(self) -> None:
        self.out.flush()
        if self.err is not self.out:
            self.err.flush()


class CellRenderer(Renderer):
    """The renderer of ``%rjob receive`` and ``%rjob invoke``: records into the current cell,
    values collected; what it cut goes whole into the shell's ``_rjob_cut``."""

    def __init__(self, shell: Any, jobs: Iterable[Job], streaming: bool = False) -> None:
        super().__init__(CellTarget(shell), jobs, streaming, namespace=getattr(shell, "user_ns", None))
        self.shell = shell
