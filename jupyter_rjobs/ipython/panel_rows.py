"""The panel's rows: one reusable row of widgets per job shown (and per session), the cells
they are made of, and how a state and an elapsed time are drawn."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any, Callable

import ipywidgets as widgets

from jupyter_rjobs.core.job import Job, JobState
from jupyter_rjobs.core.table import _STATE_COLOURS, progress_text

__all__ = ["COLUMNS", "ROW_LAYOUT", "STYLE", "ACTIVE_STATES", "cell", "button", "elapsed_text", "state_html", "JobRow", "SessionRow"]

ACTIVE_STATES = frozenset({JobState.Running, JobState.Stopping})
# (column title, cell width); the progress column and the buttons follow
COLUMNS = (
    ("Id", "40px"),
    ("Name", "104px"),
    ("Type", "100px"),
    ("State", "108px"),
    ("Location", "84px"),
    ("Command", "144px"),
    ("Elapsed", "64px"),
    ("HasMoreData", "106px"),
)
ROW_LAYOUT = {"align_items": "center", "overflow": "visible", "width": "max-content", "flex": "0 0 auto"}
STYLE = """<style>
.rjob-spin{display:inline-block;animation:rjob-spin 1s linear infinite}
@keyframes rjob-spin{from{transform:rotate(0deg)}to{transform:rotate(360deg)}}
.rjob-panel .widget-html-content{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.rjob-row:hover{background:rgba(0,0,0,0.04)}
</style>"""


def elapsed_text(job: Job, now: datetime | None = None) -> str:
    """How long the job ran (or has been running): 12s, 3m05s, 1h02m."""
    if job.begin_time is None:
        return ""
    seconds = int(((job.end_time or now or datetime.now()) - job.begin_time).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def state_html(state: JobState) -> str:
    colour = _STATE_COLOURS.get(state.value, "inherit")
    spinner = "<span class='rjob-spin'>◐</span> " if state in ACTIVE_STATES else ""
    return (
        f"<span class='rjob-state' data-state='{state.value}' style='color:{colour};font-weight:bold'>"
        f"{spinner}{state.value}</span>"
    )


def cell(width: str) -> widgets.HTML:
    return widgets.HTML(layout=widgets.Layout(width=width, margin="0 4px 0 0", flex="0 0 auto"))  # never squeezed: columns align


def button(description: str, tooltip: str, width: str = "72px") -> widgets.Button:
    return widgets.Button(description=description, tooltip=tooltip, layout=widgets.Layout(width=width, height="26px", flex="0 0 auto"))


class JobRow:
    """The widgets of one table row. A row is never rebuilt: it is rebound to whichever job it shows."""

    def __init__(self, act: Callable[[str, JobRow], None]) -> None:
        self.job: Job | None = None
        self.expand = button("", "show or hide the child jobs", width="30px")
        self.cells = {title: cell(width) for title, width in COLUMNS}
        self.bar = widgets.FloatProgress(min=0.0, max=1.0, layout=widgets.Layout(width="70px", visibility="hidden", flex="0 0 auto"))
        self.progress = cell("100px")
        self.receive = button("Receive", "show the job's new output below (Receive-Job)", width="80px")
        self.stop = button("Stop", "stop the job (Stop-Job)", width="54px")
        self.remove = button("Remove", "forget the job and its output (Remove-Job)", width="80px")
        for action in ("expand", "receive", "stop", "remove"):
            getattr(self, action).on_click(lambda _button, action=action: act(action, self))
        self.box = widgets.HBox(
            [self.expand, *self.cells.values(), self.bar, self.progress, self.receive, self.stop, self.remove],
            layout=widgets.Layout(**ROW_LAYOUT),
        )
        self.box.add_class("rjob-row")

    def bind(self, job: Job, expanded: bool) -> None:
        if job is not self.job:
            self.job = job
            self.box._dom_classes = ("rjob-row", f"rjob-job-{job.id}")
            self.remove.disabled = job.parent is not None  # a child goes with its parent
        self.expand.description = ("▾" if expanded else "▸") if job.children else ""
        self.expand.disabled = not job.children
        self.render()

    def render(self, now: datetime | None = None) -> None:
        job = self.job
        if job is None:
            return
        cells = self.cells
        cells["Id"].value = f"&nbsp;&nbsp;↳&nbsp;{job.id}" if job.parent is not None else str(job.id)
        cells["Name"].value = html.escape(job.name)
        cells["Type"].value = str(job.kind)
        cells["State"].value = state_html(job.state)
        cells["Location"].value = html.escape(job.location)
        code = html.escape(job.code.strip(), quote=True)
        cells["Command"].value = f"<code title=\"{code}\">{html.escape(job.command)}</code>"
        cells["Elapsed"].value = elapsed_text(job, now)
        cells["HasMoreData"].value = str(job.has_more_data)
        self.stop.disabled = job.state.finished  # a click that arrives anyway is answered in the status line
        data = job.progress
        total = data.get("total") if data else None
        if data and total:
            try:
                self.bar.value = max(0.0, min(1.0, float(data.get("current") or 0) / float(total)))
            except (TypeError, ValueError):
                pass
            self.bar.bar_style = "success" if job.state is JobState.Completed else ""
            self.bar.layout.visibility = "visible"
        else:
            self.bar.layout.visibility = "hidden"
        message = html.escape(str(data.get("message") or "")) if data else ""
        self.progress.value = f"{progress_text(job)} {message}".strip()

    def close(self) -> None:
        self.job = None
        for widget in (self.expand, *self.cells.values(), self.bar, self.progress, self.receive, self.stop, self.remove):
            widget.close()
        self.box.close()


class SessionRow:
    """One session of ``manager.sessions`` (when the manager has them): what it is, Disconnect, Connect."""

    def __init__(self, act: Callable[[str, Any], None]) -> None:
        self.session: Any = None
        self.label = cell("420px")
        self.disconnect = button("Disconnect", "disconnect this session (its jobs keep running)", width="96px")
        self.connect = button("Connect", "connect this session again", width="80px")
        self.disconnect.on_click(lambda _b: act("disconnect", self.session))
        self.connect.on_click(lambda _b: act("connect", self.session))
        self.box = widgets.HBox([self.label, self.disconnect, self.connect], layout=widgets.Layout(align_items="center"))
        self.box.add_class("rjob-session")

    def render(self, session: Any) -> None:
        self.session = session
        name = getattr(session, "name", None) or str(session)
        host = getattr(session, "host", None)
        where = f" on {host}" if host and host != name else ""
        details = " ".join(str(getattr(session, key)) for key in ("state", "availability") if getattr(session, key, None) is not None)
        self.label.value = f"<b>{html.escape(str(name))}</b>{html.escape(where)} {html.escape(details)}"

    def close(self) -> None:
        for widget in (self.label, self.disconnect, self.connect, self.box):
            widget.close()
