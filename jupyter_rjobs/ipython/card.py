"""The live job card: ``%%rjob start`` shows its job as a small widget in its own cell's output,
updated in place while the notebook runs other cells, until the job ends.

A card shows Id, Name, type, State (coloured), Location and the elapsed time; a progress bar
when the job reports progress; the last lines of its output (a look, not a receive: see
``card_tail.py``); one line per child of a fan-out job; Receive, Stop and Remove (the panel's
actions, ``actions.py``). When the job ends it shows the final state and the value's short repr
or the error's one line, and stops updating.

How it stays out of the way:

- One :class:`CardHub` per manager: the manager's ONE listener for every card and ONE thread that
  redraws them. A listener call only notes the record in the card's tail and marks it dirty;
  the thread redraws dirty cards at most once per ``interval`` seconds, or per ``PER_CARD`` seconds
  a live card when there are many (a burst of output is one redraw), and, while some card's job
  runs, about once a second for the elapsed times. No polling.
- A redraw sets widget traits (comm messages, which front ends route by comm id): nothing is
  printed, so nothing lands in another cell's output.
- Its mime bundle has text/plain and text/html (the one-row job table of the time it was drawn)
  beside the widget view, for wherever widgets are not rendered (nbconvert, GitHub, ...).
- A kernel restart: the front end marks every widget of the old kernel with the class
  ``jupyter-widgets-disconnected``; the card's style then shows "the kernel restarted: this card
  no longer updates" and greys its buttons.
"""

from __future__ import annotations

import html
import threading
import weakref
from datetime import datetime
from typing import Any

import ipywidgets as widgets

from jupyter_rjobs.core.errors import JobNotFoundError
from jupyter_rjobs.core.job import Job, JobState
from jupyter_rjobs.core.manager import EventKind, JobEvent, JobManager
from jupyter_rjobs.core.records import Record, RecordKind
from jupyter_rjobs.core.table import html_table, progress_text, text_table
from jupyter_rjobs.ipython.actions import JobActions
from jupyter_rjobs.ipython.card_tail import Tail, outcome_text
from jupyter_rjobs.ipython.panel_rows import ACTIVE_STATES, button, elapsed_text, state_html
from jupyter_rjobs.ipython.render import OutputTarget, Renderer, render_records

__all__ = ["CardHub", "JobCard", "card_bundle", "card_of", "hub_of", "settle_all"]

INTERVAL = 0.25  # seconds: a card is redrawn at most this often (the shared throttle) ...
PER_CARD = 0.01  # ... or, with many live cards, this much per card (100 cards: once a second)
TICK = 1.0  # seconds: the elapsed times of running jobs move on this often (must be above INTERVAL)
STYLE = """<style>
.rjob-card{border:1px solid #ccc;border-radius:4px;padding:4px 6px;margin:2px 0;max-width:900px}
.rjob-card .rjob-card-head{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.rjob-card .rjob-card-head span.rjob-card-key{color:#757575;margin-left:10px}
.rjob-card pre.rjob-card-tail{margin:2px 0;padding:2px 4px;background:rgba(0,0,0,0.04);font-size:12px;line-height:1.3;white-space:pre-wrap;max-height:16em;overflow:auto}
.rjob-card .rjob-card-err{color:#c62828}
.rjob-card .rjob-card-gone{display:none;color:#c62828;font-weight:bold}
.rjob-card.jupyter-widgets-disconnected .rjob-card-gone{display:block}
.rjob-card.jupyter-widgets-disconnected button{pointer-events:none;opacity:0.4}
.rjob-card.jupyter-widgets-disconnected::before,.rjob-card .jupyter-widgets-disconnected::before{content:none;display:none}
.rjob-spin{display:inline-block;animation:rjob-spin 1s linear infinite}
@keyframes rjob-spin{from{transform:rotate(0deg)}to{transform:rotate(360deg)}}
</style>"""
GONE = "<div class='rjob-card-gone'>The kernel restarted: this card no longer updates, and its buttons do nothing.</div>"


class CardHub:
    """Every card of one manager: one event listener, one redrawing thread, one throttle."""

    def __init__(self, manager: JobManager, interval: float = INTERVAL) -> None:
        self.manager = manager
        self.interval = interval
        self.redraws = 0  # card redraws so far (a burst of events is coalesced into few)
        self._wake = threading.Condition()
        self._closing = threading.Event()
        self._cards: dict[int, JobCard] = {}  # a job's id (each child's too) -> its live card
        self._dirty: set[int] = set()  # ids of the cards' jobs to redraw
        self._unsubscribe: Any = None
        self._thread: threading.Thread | None = None
        self._ended: list[JobCard] = []  # cards drawn final by the thread, to send again from a cell (settle)

    @property
    def live(self) -> list[JobCard]:
        """The cards still updating (their jobs have not ended, and they were not closed)."""
        with self._wake:
            return list({id(card): card for card in self._cards.values()}.values())

    def add(self, card: JobCard) -> None:
        with self._wake:
            if self._unsubscribe is None:
                self._unsubscribe = self.manager.subscribe(self._on_event)
            for job in (card.job, *card.job.children, *card.job.leaves()):
                self._cards[job.id] = card
            self._dirty.add(card.job.id)
            if self._thread is None:  # no card was live: the thread had ended
                self._closing.clear()
                self._thread = threading.Thread(target=self._run, name="rjob-cards", daemon=True)
                self._thread.start()
            self._wake.notify()

    def discard(self, card: JobCard) -> None:
        with self._wake:
            for key in [key for key, each in self._cards.items() if each is card]:
                del self._cards[key]
            self._wake.notify()  # the thread ends once no card is live

    def touch(self, card: JobCard) -> None:
        """Redraw this card soon (after a click, say)."""
        with self._wake:
            self._dirty.add(card.job.id)
            self._wake.notify()

    # -- the manager's events (any thread; quick) -----------------------------------
    def _on_event(self, event: JobEvent) -> None:
        card = self._cards.get(event.job.id)
        if card is None:
            return
        if event.kind is EventKind.RECORD:
            record = event.record
            if record is not None and not card.tail.feed((record,)) and record.kind is not RecordKind.PROGRESS:
                return  # a value or an error: the state change that follows redraws the card
        elif event.kind is EventKind.REMOVED:
            card.removed = True
        with self._wake:
            self._dirty.add(card.job.id)
            self._wake.notify()

    # -- the one thread ---------------------------------------------------------------
    def _run(self) -> None:
        while not self._closing.is_set():
            with self._wake:
                while not self._dirty and not self._closing.is_set():
                    if not self._cards:
                        self._thread = None  # nothing to update: no thread until a card is added
                        return
                    ticking = any(card.job.state in ACTIVE_STATES for card in self._cards.values())
                    if not self._wake.wait(max(0.05, TICK - self.interval) if ticking else None):
                        break  # a tick: the elapsed times of running jobs
                dirty, self._dirty = self._dirty, set()
                cards = {id(card): card for card in self._cards.values()}
            now = datetime.now()
            for card in cards.values():
                if card.job.id in dirty or card.job.state in ACTIVE_STATES:
                    self._draw(card, now)
            if self._closing.wait(max(self.interval, PER_CARD * len(cards))):  # the throttle: events meanwhile are coalesced
                return

    def _draw(self, card: JobCard, now: datetime) -> None:
        try:
            card.draw(now)
        except Exception as exc:  # noqa: BLE001 - never printed: it would land in some cell
            card.say(f"the card could not redraw: {type(exc).__name__}: {exc}")
        self.redraws += 1
        if card.final:
            self.discard(card)  # it stops updating
            with self._wake:
                self._ended.append(card)

    def settle(self) -> None:
        """After each cell (post_execute, the kernel's main thread): send the final drawing of the cards
        that ended meanwhile once more, now as part of that cell. A front end applies widget updates
        from any thread, but a client that records widget state per cell (nbclient, papermill) keeps
        only those sent while a cell runs, so a notebook run by it is saved with its cards' last state."""
        with self._wake:
            ended, self._ended = self._ended, []
            live = {id(card): card for card in self._cards.values()}.values()
        for card in ended:
            card.resend()
        for card in live:
            if card.job.state.finished or card.removed:  # ended, not drawn yet (the throttle): drawn now
                card.draw()
                self.discard(card)

    def close(self) -> None:
        """Stop listening and end the thread (the cards stay as drawn). Idempotent."""
        self._closing.set()
        with self._wake:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            self._cards.clear()
            self._wake.notify_all()
        if unsubscribe is not None:
            unsubscribe()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        with self._wake:
            self._thread = None  # a card added later starts a new one


_hubs: weakref.WeakKeyDictionary[JobManager, CardHub] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def hub_of(manager: JobManager) -> CardHub:
    """The one hub of ``manager``'s cards, made on first use."""
    with _hubs_lock:
        hub = _hubs.get(manager)
        if hub is None:
            hub = _hubs[manager] = CardHub(manager)
        return hub


def settle_all() -> None:
    """:meth:`CardHub.settle` for every manager's cards (the post_execute hook)."""
    with _hubs_lock:
        hubs = list(_hubs.values())
    for hub in hubs:
        hub.settle()


class JobCard(JobActions, widgets.VBox):
    """One job's live card. Made by :func:`card_bundle` when ``%%rjob start`` shows its job."""

    def __init__(self, job: Job, manager: JobManager, *, lines: int = 10, shell: Any = None, hub: CardHub | None = None) -> None:
        self.job = job
        self.manager = manager
        self.final = False  # drawn in its final state: no more updates
        self.removed = False
        self._shell = shell
        self._draw_lock = threading.RLock()
        self._init_actions()
        labels = {child.id: child.location for child in job.leaves() if child is not job}
        self.tail = Tail(lines, labels)
        self._head = widgets.HTML()
        self._head.add_class("rjob-card-head")
        self._bar = widgets.FloatProgress(min=0.0, max=1.0, layout=widgets.Layout(width="240px", display="none"))
        self._body = widgets.HTML()
        self.status = widgets.Label()
        self.status.add_class("rjob-card-status")
        self.output = widgets.Output(layout=widgets.Layout(display="none", max_height="240px", overflow="auto"))
        self._output_lock = threading.Lock()
        self._buttons = {
            "receive": button("Receive", "show the job's new output in this card (Receive-Job)", width="80px"),
            "stop": button("Stop", "stop the job (Stop-Job)", width="54px"),
            "remove": button("Remove", "forget the job and its output (Remove-Job)", width="80px"),
        }
        for action, each in self._buttons.items():
            each.on_click(lambda _b, action=action: self._click(action))
        self._row = widgets.HBox([*self._buttons.values(), self.status], layout=widgets.Layout(align_items="center"))
        self._style = widgets.HTML(STYLE + GONE)  # sent once; GONE shows only once the kernel is gone
        super().__init__([self._style, self._head, self._bar, self._body, self._row, self.output])
        self.add_class("rjob-card")
        self.add_class(f"rjob-card-{job.id}")
        self.hub = hub or hub_of(manager)
        _cards[id(job)] = self
        if not job.state.finished:
            self.hub.add(self)  # first: a record that comes meanwhile is not missed (the tail holds it)
        self.tail.prime(job.peek())  # what came before the card: a look, the cursor stays
        self.draw()
        if self.final:
            self.hub.discard(self)

    # -- drawing (the hub's thread, or the caller's) -----------------------------------
    def draw(self, now: datetime | None = None) -> None:
        with self._draw_lock:  # the hub's thread, a click, a cell's end (settle)
            self._draw(now)

    def _draw(self, now: datetime | None) -> None:
        job = self.job
        state = job.state
        done = state.finished or self.removed
        self._head.value = self._head_html(state, now)
        self._draw_progress(state)
        parts = [self._children_html()] if job.children else []
        parts.append(self.tail.html())
        if done:
            outcome = outcome_text(job)
            parts.append(f"<div class='rjob-card-outcome'>{state_html(state)} {html.escape(outcome)}</div>")
        self._body.value = "".join(part for part in parts if part)
        self._buttons["stop"].disabled = done
        self._buttons["remove"].disabled = self.removed
        self._buttons["receive"].disabled = self.removed
        if self.removed:
            self.say(f"{job.label} was removed")
        self.final = done

    def resend(self) -> None:
        """Send the card's drawing again (as it is: nothing is redrawn)."""
        for widget in (self._head, self._bar, self._body, self.status, *self._buttons.values()):
            widget.send_state()

    def _head_html(self, state: JobState, now: datetime | None) -> str:
        job = self.job
        fields = [
            ("Id", str(job.id)), ("Name", job.name), ("Type", str(job.kind)),
            ("Location", job.location), ("Elapsed", elapsed_text(job, now)),
        ]
        shown = "".join(f"<span class='rjob-card-key'>{key}</span> {html.escape(value)}" for key, value in fields)
        return f"<div class='rjob-card-head'>{state_html(state)}{shown}</div>"

    def _draw_progress(self, state: JobState) -> None:
        data = self.job.progress
        if not data:
            return
        total = data.get("total")
        if total:
            try:
                self._bar.value = max(0.0, min(1.0, float(data.get("current") or 0) / float(total)))
            except (TypeError, ValueError):
                pass
        self._bar.description = progress_text(self.job)
        self._bar.bar_style = {JobState.Completed: "success", JobState.Failed: "danger"}.get(state, "")
        self._bar.layout.display = ""

    def _children_html(self) -> str:
        rows = []
        for child in self.job.children:
            outcome = outcome_text(child) if child.state.finished else progress_text(child)
            rows.append(
                f"<div class='rjob-card-child' data-host='{html.escape(child.location, quote=True)}'>{child.id} "
                f"<b>{html.escape(child.location)}</b> {state_html(child.state)} {html.escape(outcome)}</div>"
            )
        return "".join(rows)

    # -- actions (the kernel's main thread, from the front end) ---------------------------
    def _click(self, action: str) -> None:
        self.act_on(action, self.job)
        if action == "remove":
            try:
                self.manager.get(self.job.id)
            except JobNotFoundError:
                self.removed = True  # a finished card no longer hears the manager's events
        self.refresh()

    def refresh(self) -> None:
        if self.final:
            self.draw()  # a finished card is no longer in the hub: one redraw for what a click changed
        else:
            self.hub.touch(self)

    def say(self, message: str) -> None:
        """One line in the card's status line (from any thread)."""
        self.status.value = message

    def show_records(self, job: Job, records: list[Record]) -> None:
        """Received records, into the card's own Output (never into a cell), by the one renderer."""
        self.output.layout.display = ""
        namespace = getattr(self._shell, "user_ns", None)
        renderer = Renderer(OutputTarget(self.output, self._output_lock), job.leaves(), show_values=True,
                            labelled=bool(job.children), namespace=namespace)
        render_records(records, renderer)

    def close(self) -> None:
        """Stop updating and close every widget the card made. Idempotent."""
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.discard(self)
            self._join_helpers()
            for widget in (self._style, self._head, self._bar, self._body, self.status, self.output, *self._buttons.values(), self._row):
                widget.close()
        super().close()


_cards: weakref.WeakValueDictionary[int, JobCard] = weakref.WeakValueDictionary()


def card_of(job: Job) -> JobCard | None:
    """The latest card made for ``job`` (while it is open), or None."""
    card = _cards.get(id(job))
    return card if card is not None and card.job is job else None


def card_bundle(job: Job, manager: JobManager, *, lines: int = 10, shell: Any = None) -> dict[str, Any]:
    """The card of ``job`` as a mime bundle: the widget view, and the one-row job table (text and
    HTML, as drawn now) for wherever widgets are not rendered."""
    card = JobCard(job, manager, lines=lines, shell=shell)
    bundle: dict[str, Any] = dict(card._repr_mimebundle_())
    bundle["text/plain"] = text_table([job])
    bundle["text/html"] = html_table([job])
    return bundle
