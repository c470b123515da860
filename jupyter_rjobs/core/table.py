"""Jobs as PowerShell-like text tables and as HTML tables."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from jupyter_rjobs.core.job import Job

__all__ = ["COLUMNS", "job_row", "progress_text", "text_table", "html_table", "JobTable", "JobDetails", "SessionTable", "LeftJobTable"]

COLUMNS = ("Id", "Name", "PSJobTypeName", "State", "HasMoreData", "Location", "Command")
PROGRESS_COLUMN = "Progress"  # shown after State when some job in the table reported progress

_STATE_COLOURS = {
    "Running": "#1565c0",
    "Completed": "#2e7d32",
    "Failed": "#c62828",
    "Stopped": "#6d4c41",
    "Stopping": "#ef6c00",
    "Disconnected": "#8e24aa",
    "NotStarted": "#757575",
    "Blocked": "#f9a825",
}


def job_row(job: Job, indent: str = "") -> tuple[str, ...]:
    return (
        f"{indent}{job.id}",
        job.name,
        str(job.kind),
        str(job.state),
        str(job.has_more_data),
        job.location,
        job.command,
    )


def progress_text(job: Job) -> str:
    """The job's latest progress as "42%" (or the count, when it gave no total), "" if none."""
    data = job.progress
    if not data:
        return ""
    current, total = data.get("current"), data.get("total")
    if current is None:
        return ""
    try:
        return f"{100 * current / total:.0f}%" if total else f"{current:g}"
    except (TypeError, ValueError):
        return str(current)


def _rows(jobs: Iterable[Job], include_children: bool) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The columns, and one row a job (its children indented after it); Progress only when some job has it."""
    listed: list[tuple[Job, str]] = []
    for job in jobs:
        listed.append((job, ""))
        if include_children:
            listed.extend((child, "  ") for child in job.children)
    with_progress = any(job.progress for job, _ in listed)
    columns = COLUMNS if not with_progress else COLUMNS[:4] + (PROGRESS_COLUMN,) + COLUMNS[4:]
    rows = []
    for job, indent in listed:
        row = job_row(job, indent)
        rows.append(row if not with_progress else row[:4] + (progress_text(job),) + row[4:])
    return columns, rows


def text_grid(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under column names, PowerShell's Format-Table style."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def html_grid(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under column names as an HTML table; a State column is coloured."""
    head = "".join(f"<th style='text-align:left'>{c}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for column, cell in zip(columns, row):
            style = "text-align:left"
            if column == "State":
                style += f";color:{_STATE_COLOURS.get(cell, 'inherit')};font-weight:bold"
            if column == "Command":
                style += ";font-family:monospace"
            cells.append(f"<td style='{style}'>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='rjob-table'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def text_table(jobs: Sequence[Job], include_children: bool = False) -> str:
    return text_grid(*_rows(jobs, include_children))


def html_table(jobs: Sequence[Job], include_children: bool = False) -> str:
    return html_grid(*_rows(jobs, include_children))


class JobTable(list):  # type: ignore[type-arg]
    """A list of jobs that shows itself as a table (text in a terminal, HTML in a notebook)."""

    def __init__(self, jobs: Iterable[Job] = (), include_children: bool = False, note: str = "") -> None:
        super().__init__(jobs)
        self.include_children = include_children
        self.note = note

    def __str__(self) -> str:
        table = text_table(self, self.include_children) if self else "(no jobs)"
        return f"{table}\n{self.note}" if self.note else table

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        table = html_table(self, self.include_children) if self else "<em>(no jobs)</em>"
        return table + (f"<p>{html.escape(self.note)}</p>" if self.note else "")


class JobDetails:
    """Every property of one job (``%rjob show``)."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def fields(self) -> list[tuple[str, str]]:
        job = self.job
        duration = ""
        if job.begin_time is not None:
            from datetime import datetime

            end = job.end_time or datetime.now()
            duration = f"{(end - job.begin_time).total_seconds():.3f} s"
        children = "\n".join(
            f"{c.id}  {c.name}  on {c.location}  {c.state}" + (f"  ({c.error})" if c.error is not None else "")
            for c in job.children
        )
        return [
            ("Id", str(job.id)),
            ("InstanceId", str(job.instance_id)),
            ("Name", job.name),
            ("PSJobTypeName", str(job.kind)),
            ("State", str(job.state) + (f" ({job.reason})" if job.reason else "")),
            ("HasMoreData", str(job.has_more_data)),
            ("Location", job.location),
            ("BeginTime", str(job.begin_time or "")),
            ("EndTime", str(job.end_time or "")),
            ("Duration", duration),
            ("Parent", str(job.parent.id) if job.parent is not None else ""),
            ("ChildJobs", children),
            ("Error", str(job.error) if job.error is not None else ""),
            ("Command", job.code.strip()),
        ]

    def __str__(self) -> str:
        fields = self.fields()
        width = max(len(k) for k, _ in fields)
        lines = []
        for key, value in fields:
            first, *more = value.splitlines() or [""]
            lines.append(f"{key.ljust(width)} : {first}")
            lines += [" " * (width + 3) + line for line in more]
        text = "\n".join(lines)
        if self.job.error is not None and self.job.error.traceback:
            text += "\n\n" + "\n".join(self.job.error.traceback)
        return text

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left;vertical-align:top'>{k}</th>"
            f"<td style='text-align:left'><pre style='margin:0'>{html.escape(v)}</pre></td></tr>"
            for k, v in self.fields()
        )
        error = ""
        if self.job.error is not None and self.job.error.traceback:
            error = f"<pre>{html.escape(self.job.error.traceback_text)}</pre>"
        return f"<table class='rjob-details'>{rows}</table>{error}"



class RowTable:
    """Any rows under column names, shown like the job tables (sessions, jobs left on hosts)."""

    columns: tuple[str, ...] = ()
    empty = "(none)"

    def __init__(self, items: Iterable[Any] = (), note: str = "") -> None:
        self.items = list(items)
        self.note = note

    def row(self, item: Any) -> tuple[str, ...]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Any:
        return iter(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]

    def __str__(self) -> str:
        table = text_grid(self.columns, [self.row(item) for item in self.items]) if self.items else self.empty
        return f"{table}\n{self.note}" if self.note else table

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        table = html_grid(self.columns, [self.row(item) for item in self.items]) if self.items else f"<em>{html.escape(self.empty)}</em>"
        return table + (f"<p>{html.escape(self.note)}</p>" if self.note else "")


_STATE_COLOURS.update({"Opened": "#2e7d32", "Broken": "#c62828", "Closed": "#757575"})


class SessionTable(RowTable):
    """Sessions (Get-PSSession): Id, Name, Host, State, Availability."""

    columns = ("Id", "Name", "Host", "State", "Availability", "Reason")
    empty = "(no sessions)"

    def row(self, session: Any) -> tuple[str, ...]:
        return (str(session.id), session.name, session.host, str(session.state), str(session.availability), session.reason)


class LeftJobTable(RowTable):
    """Remote jobs this kernel does not follow, as the local registry last knew them."""

    columns = ("Name", "Host", "LastKnownState", "Started", "Kernel", "Command")
    empty = "(no jobs left on hosts)"

    def row(self, job: Any) -> tuple[str, ...]:
        from datetime import datetime

        kernel = f"pid {job.kernel_pid} (running)" if job.kernel_alive else "gone"
        started = datetime.fromtimestamp(job.started).strftime("%Y-%m-%d %H:%M:%S") if job.started else ""
        return (job.name, job.host, job.shown_state, started, kernel, job.command)
