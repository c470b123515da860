"""The live job panel (``%rjob panel``, ``jupyter_rjobs.panel()``): an ipywidgets view of a
JobManager, driven by its events.

Imported only when a panel is asked for (ipywidgets is heavy). How it stays cheap:

- The manager's listener only notes which jobs changed (a set, under a lock) and wakes the
  panel's one thread; that thread redraws at most once per ``interval`` seconds, so a burst
  of events (1000 jobs started at once) is coalesced into a few redraws.
- Rows are a pool of widgets, one page (``page_size`` rows) at most, rebound to whichever job
  a row shows; a redraw only sets the values that changed, and traitlets sends only those.
- Nothing is printed from a thread: received output (drawn by ``_render.py``, the one renderer
  of records) and messages go into the panel's own Output and status widgets, whose comm
  messages are safe from any thread in ipykernel 6+.
- ``close()`` unsubscribes, ends the thread (and any stop still in progress), closes every
  widget the panel made.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import ipywidgets as widgets

from jupyter_rjobs.core.errors import RJobError
from jupyter_rjobs.core.job import Job, JobState
from jupyter_rjobs.core.manager import EventKind, JobEvent, JobManager
from jupyter_rjobs.core.records import Record, RecordKind
from jupyter_rjobs.ipython.actions import JobActions
from jupyter_rjobs.ipython.panel_rows import ACTIVE_STATES, COLUMNS, ROW_LAYOUT, STYLE, JobRow, SessionRow, button
from jupyter_rjobs.ipython.render import OutputTarget, Renderer, render_records

__all__ = ["JobPanel", "panel"]

ALL_STATES = "All"


def panel(manager: JobManager | None = None, *, interval: float = 0.25, page_size: int = 50) -> JobPanel:
    """A live panel of ``manager``'s jobs (default: the running IPython's). Display it; ``close()`` ends it."""
    shell = None
    if manager is None:
        from jupyter_rjobs.ipython.extension import get_manager

        manager = get_manager()
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython is a dependency
        shell = None
    return JobPanel(manager, interval=interval, page_size=page_size, shell=shell)


class JobPanel(JobActions, widgets.VBox):
    """A live table of the manager's jobs with Receive, Stop and Remove, a state filter and
    pages; received output appears in the panel's own Output area, messages in its status line."""

    def __init__(
        self, manager: JobManager, *, interval: float = 0.25, page_size: int = 50, shell: Any = None
    ) -> None:
        if interval <= 0:
            raise RJobError(f"the panel's interval must be above 0 seconds, not {interval:g}")
        self.manager = manager
        self.interval = interval
        self.page_size = max(1, page_size)
        self.updates = 0  # redraws so far: a burst of events is coalesced into few of them
        self._wake = threading.Condition()
        self._closing = threading.Event()
        self._dirty: set[int] = set()
        self._layout_dirty = True
        self._ticking = False  # a visible job runs: its elapsed time moves on once a second
        self._closed = False
        self._expanded: set[int] = set()
        self._state_filter: JobState | None = None
        self._page = 0
        self._rows: list[JobRow] = []
        self._rows_in_use = 0
        self._session_rows: list[SessionRow] = []
        self._init_actions()
        self._render_lock = threading.RLock()
        self._output_lock = threading.Lock()
        super().__init__(self._build())
        self.add_class("rjob-panel")
        self.layout.overflow_x = "auto"  # a narrow notebook scrolls the table rather than squeezing it
        self._static.append(self.children[0])

        self._unsubscribe = manager.subscribe(self._on_event)  # first: a job added meanwhile is not missed
        self._flush()  # the first drawing, in the caller's thread
        self._shell = shell
        if shell is not None and hasattr(shell, "events"):
            shell.events.register("post_execute", self.refresh)  # a cell may have received output
        self._thread = threading.Thread(target=self._run, name="rjob-panel", daemon=True)
        self._thread.start()

    def _build(self) -> list[widgets.Widget]:
        """The panel's own widgets (toolbar, header, boxes for rows, status, output), in order."""
        self._filter = widgets.Dropdown(
            options=[ALL_STATES, *(s.value for s in JobState)], value=ALL_STATES, description="State",
            layout=widgets.Layout(width="220px"),
        )
        self._filter.observe(self._filter_changed, names="value")
        self._previous = button("◀", "previous page", width="36px")
        self._next = button("▶", "next page", width="36px")
        self._previous.on_click(lambda _b: self._turn_page(-1))
        self._next.on_click(lambda _b: self._turn_page(+1))
        self._clear = button("Clear output", "clear the received output below", width="110px")
        self._clear.on_click(lambda _b: self.clear_output())
        self.summary = widgets.HTML()
        self.dashboards = widgets.HTML()  # a link to the Dask dashboard of each cluster of `--cluster` jobs
        self.status = widgets.Label()
        self.output = widgets.Output(layout=widgets.Layout(border="1px solid #ddd", max_height="320px", overflow="auto"))
        self._rows_box = widgets.VBox(layout=widgets.Layout(overflow="visible", width="max-content"))
        self._sessions_box = widgets.VBox()
        self._sessions_title = widgets.HTML("<b>Sessions</b>")
        self._pages = 1
        header = widgets.HBox(
            [widgets.HTML(layout=widgets.Layout(width="30px", margin="2px", flex="0 0 auto"))]
            + [widgets.HTML(f"<b>{title}</b>", layout=widgets.Layout(width=width, margin="0 4px 0 0", flex="0 0 auto")) for title, width in COLUMNS]
            + [widgets.HTML("<b>Progress</b>", layout=widgets.Layout(width="174px", flex="0 0 auto"))],
            layout=widgets.Layout(**ROW_LAYOUT),
        )
        toolbar = widgets.HBox([self._filter, self._previous, self._next, self.summary, self._clear, self.dashboards], layout=widgets.Layout(align_items="center"))
        self._static = [
            self._filter, self._previous, self._next, self._clear, self.summary, self.dashboards, self.status, self._sessions_title,
            *header.children, header, toolbar,
        ]
        return [widgets.HTML(STYLE), toolbar, header, self._rows_box, self._sessions_box, self.status, self.output]

    # -- events (any thread; must be quick) -------------------------------------------
    def _on_event(self, event: JobEvent) -> None:
        kind = event.kind
        if kind is EventKind.RECORD and event.record is not None and event.record.kind is not RecordKind.PROGRESS:
            return  # output changes no cell: HasMoreData is True anyway while a job runs
        with self._wake:
            if kind is not EventKind.RECORD and (kind is not EventKind.STATE or self._state_filter is not None):
                self._layout_dirty = True  # which jobs are listed may have changed
            self._dirty.add(event.job.id)
            self._wake.notify()

    def refresh(self) -> None:
        """Redraw soon (for changes that send no event: output received elsewhere, sessions)."""
        with self._wake:
            self._layout_dirty = True
            self._wake.notify()

    # -- the drawing thread -----------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._dirty or self._layout_dirty):
                    if not self._wake.wait(1.0 if self._ticking else None):
                        break  # a tick: running jobs' elapsed times
                if self._closed:
                    return
            try:
                self._flush()
            except Exception as exc:  # noqa: BLE001 - never printed: it would land in some cell
                self.say(f"the panel could not redraw: {type(exc).__name__}: {exc}")
            if self._closing.wait(self.interval):  # the throttle: events meanwhile are coalesced
                return

    def _flush(self) -> None:
        with self._wake:
            dirty, self._dirty = self._dirty, set()
            relayout, self._layout_dirty = self._layout_dirty, False
        with self._render_lock:
            if self._closed:
                return
            self.updates += 1
            now = datetime.now()
            everything = self.manager.list()  # one snapshot for the rows and the summary: they never disagree
            if relayout:
                self._layout(everything)
            else:
                for row in self._rows[: self._rows_in_use]:
                    job = row.job
                    if job is not None and (job.id in dirty or job.state in ACTIVE_STATES or (job.parent and job.parent.id in dirty)):
                        row.render(now)
            self._summarize(everything)
            self._ticking = any(row.job is not None and row.job.state in ACTIVE_STATES for row in self._rows[: self._rows_in_use])
            self._draw_sessions()

    def _listed_jobs(self, everything: list[Job]) -> list[Job]:
        listed = []
        for job in everything:
            if self._state_filter is not None and job.state is not self._state_filter:
                continue
            listed.append(job)
            if job.children and job.id in self._expanded:
                listed.extend(job.children)
        return listed

    def _layout(self, everything: list[Job]) -> None:
        listed = self._listed_jobs(everything)
        pages = max(1, -(-len(listed) // self.page_size))
        self._page = min(self._page, pages - 1)
        shown = listed[self._page * self.page_size : (self._page + 1) * self.page_size]
        while len(self._rows) < len(shown):
            self._rows.append(JobRow(self._act))
        for row, job in zip(self._rows, shown):
            row.bind(job, job.id in self._expanded)
        for row in self._rows[len(shown) :]:
            row.job = None
        if self._rows_in_use != len(shown):
            self._rows_in_use = len(shown)
            self._rows_box.children = tuple(row.box for row in self._rows[: len(shown)])
        self._pages = pages
        self._previous.disabled = self._page == 0
        self._next.disabled = self._page >= pages - 1

    def _summarize(self, everything: list[Job]) -> None:
        counts: dict[str, int] = {}
        for job in everything:
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
        parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        page = f"; page {self._page + 1} of {self._pages}" if self._pages > 1 else ""
        self.summary.value = f"{len(everything)} jobs" + (f" ({parts})" if parts else "") + page
        self._link_dashboards()

    def _link_dashboards(self) -> None:
        """A link to the dashboard of each Dask cluster the manager knows (none: nothing shown)."""
        clusters = getattr(self.manager, "clusters", None)
        handles = clusters.handles() if clusters is not None else []
        links = [f'<a href="{html.escape(h.dashboard_link)}" target="_blank" title="the Dask dashboard of cluster {html.escape(h.name)}">'
                 f"{html.escape(h.name)} dashboard</a>" for h in handles if h.dashboard_link]
        value = "&nbsp;·&nbsp;".join(links)
        if self.dashboards.value != value:
            self.dashboards.value = value

    def _draw_sessions(self) -> None:
        """The hook for sessions: when the manager has ``sessions`` (a method returning them, a list or
        a mapping), a row each. A failure here is said in the status line and leaves the jobs' rows be."""
        sessions = getattr(self.manager, "sessions", None)
        if sessions is None:
            return
        try:
            if callable(sessions):
                sessions = sessions()
            items = list(sessions.values() if isinstance(sessions, Mapping) else sessions)
        except Exception as exc:  # noqa: BLE001
            self.say(f"could not list the sessions: {type(exc).__name__}: {exc}")
            return
        while len(self._session_rows) < len(items):
            self._session_rows.append(SessionRow(self._session_act))
        for row, session in zip(self._session_rows, items):
            row.render(session)
        boxes = tuple(row.box for row in self._session_rows[: len(items)])
        if tuple(self._sessions_box.children[1:]) != boxes:
            self._sessions_box.children = ((self._sessions_title,) + boxes) if boxes else ()

    # -- controls (the kernel's main thread, from the front end) ---------------------------
    def _filter_changed(self, change: dict[str, Any]) -> None:
        value = change["new"]
        self._state_filter = None if value == ALL_STATES else JobState.parse(value)
        self._page = 0
        self.refresh()

    def _turn_page(self, step: int) -> None:
        self._page = max(0, self._page + step)
        self.refresh()

    def _act(self, action: str, row: JobRow) -> None:
        job = row.job
        if job is None:
            self.say("that row shows no job any more")
            return
        self.act_on(action, job)
        with self._wake:
            self._dirty.add(job.id)
            self._wake.notify()

    def _expand_job(self, job: Job) -> None:
        if job.children:
            self._expanded ^= {job.id}
            self.refresh()

    def _session_act(self, action: str, session: Any) -> None:
        """Disconnect or Connect: the manager's ``disconnect(session)`` / ``connect(session)`` when it
        has them, else the session's own ``disconnect()`` / ``connect()``."""
        by_manager = getattr(self.manager, action, None)
        if session is None or (by_manager is None and getattr(session, action, None) is None):
            self.say(f"this session cannot {action}")
            return

        def run() -> None:
            try:
                if by_manager is not None:
                    by_manager(session)
                else:
                    getattr(session, action)()
                self.say(f"{action}: done")
            except Exception as exc:  # noqa: BLE001
                self.say(f"{action} failed: {type(exc).__name__}: {exc}")
            self.refresh()

        self._in_background(run)

    # -- what the panel shows ---------------------------------------------------------------
    def say(self, message: str) -> None:
        """One line in the panel's status line (from any thread)."""
        self.status.value = message

    def show_records(self, job: Job, records: list[Record]) -> None:
        """Received records, in order, into the panel's Output (never into a cell), by the one
        renderer (``_render.py``): labelled, values shown, long lines and large displays capped."""
        namespace = getattr(self._shell, "user_ns", None)
        renderer = Renderer(OutputTarget(self.output, self._output_lock), [job], show_values=True, labelled=True, namespace=namespace)
        render_records(records, renderer)

    def clear_output(self) -> None:
        with self._output_lock:
            self.output.outputs = ()

    # -- the end ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening, end the panel's thread, close every widget it made. Idempotent."""
        if not getattr(self, "_closed", True):
            with self._wake:
                self._closed = True
                self._wake.notify_all()
            self._closing.set()
            self._unsubscribe()
            if self._shell is not None and self.refresh in self._shell.events.callbacks.get("post_execute", []):
                self._shell.events.unregister("post_execute", self.refresh)
            if threading.current_thread() is not self._thread:
                self._thread.join(10)
            self._join_helpers()
            with self._render_lock:
                for row in self._rows:
                    row.close()
                for session_row in self._session_rows:
                    session_row.close()
                for widget in (*self._static, self.output, self._rows_box, self._sessions_box):
                    widget.close()
        super().close()
