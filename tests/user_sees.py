"""What a user sees in a cell, checked one way for the demo, the notebooks and the kernel tests.

A cell may show only what it is expected to show. Always wrong, anywhere:

- ``Error in callback`` (IPython printing a failed event callback: the IPython 9 fault of wave 1);
- a traceback or an error output the test did not expect (an expected one is named by its
  exception name, e.g. a failed job's ``ZeroDivisionError`` shown by ``receive``);
- anything on stderr the test did not expect (a warning, a logged error, paramiko noise).

Adapters turn each source into :class:`Seen` cells: :func:`from_kernel` (iopub outputs of
``tests/kernel_helpers.KernelSession``), :func:`from_notebook` (an executed nbformat notebook;
tag ``shows-job-error`` allows an error output, tag ``shows-stderr`` allows stderr) and
:func:`from_transcript` (a terminal IPython transcript, split at its ``In [N]:`` prompts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

__all__ = ["Seen", "noise", "assert_user_sees_no_noise", "from_kernel", "from_notebook", "from_transcript"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CALLBACK_ERROR = "Error in callback"
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^-{20,}\n(\w+)\s+Traceback", re.M)
ERROR_LINE = re.compile(r"^(\w+(?:Error|Exception|Warning|Interrupt|Exit))\b[:\s]", re.M)


@dataclass
class Seen:
    """One cell as the user sees it."""

    where: str
    stdout: str = ""
    stderr: str = ""
    errors: list[str] = field(default_factory=list)  # exception names of error outputs
    allowed_errors: tuple[str, ...] = ()  # exception names this cell may show
    allow_stderr: bool = False


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


def noise(cells: Iterable[Seen]) -> list[str]:
    """Everything a user should not have seen, one line each (empty: the output is clean)."""
    found: list[str] = []
    for cell in cells:
        text = _plain(cell.stdout + cell.stderr)
        if CALLBACK_ERROR in text:
            found.append(f"{cell.where}: {CALLBACK_ERROR!r} in the output")
        for name in cell.errors:
            if name not in cell.allowed_errors:
                found.append(f"{cell.where}: an unexpected error output {name}")
        shown = set(ERROR_LINE.findall(_plain(cell.stdout)))
        if TRACEBACK.search(_plain(cell.stdout)) and not (shown and shown <= set(cell.allowed_errors)):
            found.append(f"{cell.where}: an unexpected traceback in stdout ({', '.join(sorted(shown)) or 'unnamed'})")
        if cell.stderr.strip() and not cell.allow_stderr:
            found.append(f"{cell.where}: unexpected stderr {_plain(cell.stderr).strip()[:300]!r}")
    return found


def assert_user_sees_no_noise(cells: Iterable[Seen]) -> None:
    cells = list(cells)
    found = noise(cells)
    assert not found, "what a user would see is not clean:\n  " + "\n  ".join(found)


def _add(seen: Seen, kind: str, stream: str | None, text: str, ename: str, data: Any) -> None:
    """One output (a kernel message or a notebook output: the same fields) into ``seen``."""
    if kind == "stream":
        if stream == "stderr":
            seen.stderr += text
        else:
            seen.stdout += text
    elif kind == "error":
        seen.errors.append(ename)
    else:
        seen.stdout += str((data or {}).get("text/plain", ""))


def from_kernel(outputs: Iterable[Any], where: str = "cell", allowed_errors: Sequence[str] = (), allow_stderr: bool = False) -> Seen:
    """One cell from ``KernelSession`` outputs (objects with ``msg_type`` and ``content``)."""
    seen = Seen(where, allowed_errors=tuple(allowed_errors), allow_stderr=allow_stderr)
    for output in outputs:
        content = output.content
        _add(seen, output.msg_type, content.get("name"), content.get("text", ""), content.get("ename", "?"), content.get("data"))
    return seen


def from_notebook(notebook: Any, name: str = "notebook") -> list[Seen]:
    """Every code cell of an executed notebook; tags ``shows-job-error`` and ``shows-stderr``
    say what a cell may show."""
    cells = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        seen = Seen(f"{name} cell {index}", allow_stderr="shows-stderr" in tags)
        for output in cell.get("outputs", []):
            _add(seen, output.output_type, output.get("name"), output.get("text", ""), output.get("ename", "?"), output.get("data"))
        if "shows-job-error" in tags:
            seen.allowed_errors = tuple(seen.errors) + tuple(ERROR_LINE.findall(_plain(seen.stdout)))
        cells.append(seen)
    return cells


def from_transcript(stdout: str, stderr: str, allowed: dict[str, Sequence[str]] | None = None) -> list[Seen]:
    """A terminal IPython transcript split at its prompts. ``allowed`` maps a text found in a
    cell's input to the exception names that cell may show (e.g. ``{"receive oops": ["ZeroDivisionError"]}``).
    The process's stderr is one more cell, which must be empty."""
    allowed = allowed or {}
    parts = re.split(r"(?m)^(?=In \[\d+\]: )", stdout)
    cells = []
    for part in parts:
        head = part.split("\n", 1)[0]
        permitted: tuple[str, ...] = ()
        for needle, names in allowed.items():
            if needle in head:
                permitted += tuple(names)
        cells.append(Seen(head.strip() or "before the first prompt", stdout=part, allowed_errors=permitted))
    cells.append(Seen("the process's stderr", stderr=stderr))
    return cells
