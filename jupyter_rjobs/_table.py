"""Jobs as PowerShell-like text tables and as HTML tables."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from ._job import Job

__all__ = ["COLUMNS", "job_row", "progress_text", "text_table", "html_table", "JobTable", "JobDetails"]

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


def text_table(jobs: Sequence[Job], include_children: bool = False) -> str:
    columns, rows = _rows(jobs, include_children)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def html_table(jobs: Sequence[Job], include_children: bool = False) -> str:
    columns, rows = _rows(jobs, include_children)
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
            ("State", str(job.state)),
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

