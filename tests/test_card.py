"""The live job card in-process (the widgets without a front end; tests/test_card_kernel.py and
tests/test_browser_card.py drive it through a real kernel and a real browser): a look is not a
receive, the tail, the final state, the buttons, one thread for all cards, fan-out children."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
from helpers import wait_until
from test_toy_backend import ToyBackend, ToyOptions

from jupyter_rjobs import JobKind, JobManager, JobState, option, register_backend, unregister_backend
from jupyter_rjobs.core.records import Record, RecordKind
from jupyter_rjobs.ipython.card import JobCard, card_bundle, hub_of
from jupyter_rjobs.ipython.card_tail import Tail, outcome_text

PRINT_20 = "for i in range(20):\n    print('line', i)\n"
WAIT_FOR_GO = "import time\nwhile not go.is_set():\n    time.sleep(0.01)\n"


def test_a_look_is_not_a_receive(manager: JobManager) -> None:
    job = manager.start(PRINT_20 + "7", "thread")
    manager.wait(job, timeout=30)
    looked = job.peek()
    assert [r.data for r in looked if r.kind is RecordKind.STDOUT] == [f"line {i}\n" for i in range(20)]
    assert len(job.peek(3)) == 3 and job.peek(3) == looked[-3:] and job.peek(0) == []
    received = manager.receive(job)
    assert received == looked  # everything, although it was looked at twice
    assert job.peek() == [] and manager.receive(job) == []


def test_the_tail_keeps_the_last_lines_and_draws_a_redrawn_line_once() -> None:
    tail = Tail(3)
    tail.prime([])
    records = [Record(1, RecordKind.STDOUT, "a\nb\n", 0.0, 1), Record(2, RecordKind.STDERR, "oops\n", 0.0, 1),
               Record(3, RecordKind.STDOUT, "10%\r50%\r100%\nhalf", 0.0, 1)]
    assert tail.feed(records)
    assert tail.snapshot() == [("oops", True), ("100%", False), ("half", False)]
    assert not tail.feed(records)  # seen already: nothing changes
    assert "<span class='rjob-card-err'>oops</span>" in tail.html()
    assert Tail(0).html() == ""


def test_records_fed_before_the_first_look_are_taken_once_in_order() -> None:
    tail = Tail(10)
    early = [Record(3, RecordKind.STDOUT, "three\n", 0.0, 1)]
    tail.feed(early)  # an event that came while the card was looking
    tail.prime([Record(1, RecordKind.STDOUT, "one\n", 0.0, 1), Record(2, RecordKind.STDOUT, "two\n", 0.0, 1), *early])
    assert [text for text, _ in tail.snapshot()] == ["one", "two", "three"]


def test_a_card_follows_its_job_to_the_end_and_receive_still_gets_everything(manager: JobManager) -> None:
    go = threading.Event()
    job = manager.start(WAIT_FOR_GO + PRINT_20 + "sum(range(10))", "thread", namespace={"go": go})
    card = JobCard(job, manager, lines=5)
    try:
        assert "data-state='Running'" in card._head.value and card in card.hub.live
        go.set()
        assert wait_until(lambda: card.final, 30), card._head.value
        assert "data-state='Completed'" in card._head.value and "value: 45" in card._body.value
        assert [f"line {i}" for i in range(15, 20)] == [t for t, _ in card.tail.snapshot()]
        assert card not in card.hub.live  # it stopped updating
        assert [r.data for r in manager.receive(job) if r.kind is RecordKind.STDOUT] == [f"line {i}\n" for i in range(20)]
    finally:
        card.close()


def test_the_cards_buttons_stop_receive_and_remove(manager: JobManager) -> None:
    job = manager.start("import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.01)", "thread")
    card = JobCard(job, manager)
    try:
        assert wait_until(lambda: "started" in card._body.value, 30), card._body.value
        card._buttons["stop"].click()
        assert wait_until(lambda: card.final and "data-state='Stopped'" in card._head.value, 30), card._head.value
        assert card._buttons["stop"].disabled
        card._buttons["receive"].click()
        assert "started" in str(card.output.outputs) and "received" in card.status.value
        card._buttons["remove"].click()
        assert manager.list() == [] and card._buttons["remove"].disabled and "removed" in card.status.value
    finally:
        card.close()


def test_a_failed_job_shows_its_error_in_one_line(manager: JobManager) -> None:
    job = manager.start("raise ValueError('bad input\\nsecond line')", "thread")
    manager.wait(job, timeout=30)
    assert outcome_text(job) == "ValueError: bad input"
    card = JobCard(job, manager)
    try:
        assert card.final and "ValueError: bad input" in card._body.value and "second line" not in card._body.value
    finally:
        card.close()


def test_many_cards_share_one_thread_and_a_burst_is_coalesced(make_manager: Callable[..., JobManager]) -> None:
    manager = make_manager()
    go = threading.Event()
    jobs = [manager.start(WAIT_FOR_GO + "for i in range(200):\n    print(i)", "thread", namespace={"go": go}) for _ in range(20)]
    cards = [JobCard(job, manager, lines=3) for job in jobs]
    try:
        # other tests' hubs end their threads once their cards are closed: then one thread for all 20
        assert wait_until(lambda: [t.name for t in threading.enumerate()].count("rjob-cards") == 1, 10)
        before = hub_of(manager).redraws
        go.set()
        assert wait_until(lambda: all(card.final for card in cards), 60)
        assert hub_of(manager).redraws - before < 20 * 200  # 4000 records, far fewer redraws
        assert all(card.tail.snapshot() == [("197", False), ("198", False), ("199", False)] for card in cards)
        assert wait_until(lambda: "rjob-cards" not in [t.name for t in threading.enumerate()], 10)  # no live card: no thread
    finally:
        for card in cards:
            card.close()


def test_the_bundle_has_the_table_beside_the_widget(manager: JobManager) -> None:
    job = manager.start("1", "thread")
    bundle = card_bundle(job, manager)
    assert set(bundle) == {"application/vnd.jupyter.widget-view+json", "text/plain", "text/html"}
    assert "PSJobTypeName" in bundle["text/plain"] and "<table" in bundle["text/html"]


# -- a fan-out job: one line per child (a backend with several locations, no SSH needed) ----------
@dataclass(frozen=True)
class FanOptions(ToyOptions):
    places: str = option("a,b", flag="--fan-places", metavar="P,Q", help="the places a fan-out toy job runs in")


class FanBackend(ToyBackend):
    options_type = FanOptions

    def locations(self, options: FanOptions) -> list[str]:  # type: ignore[override]
        return options.places.split(",")


@pytest.fixture
def fan_kind() -> Iterator[JobKind]:
    kind = register_backend("fan", "FanJob", lambda manager: FanBackend(4), FanOptions)
    FanBackend.kind = kind
    yield kind
    unregister_backend("fan")


def test_a_fan_out_card_shows_one_line_per_child(fan_kind: JobKind, make_manager: Callable[..., JobManager]) -> None:
    manager = make_manager()
    job = manager.start("print('hi')\n1", "fan", places="north,south")
    card = JobCard(job, manager)
    try:
        assert wait_until(lambda: card.final, 30)
        body: Any = card._body.value
        assert body.count("class='rjob-card-child'") == 2 and "data-host='north'" in body and "data-host='south'" in body
        assert {t for t, _ in card.tail.snapshot()} == {"[north] hi", "[south] hi"}
        assert job.state is JobState.Completed and "value: {" in body
    finally:
        card.close()


def test_a_card_shows_a_progress_bar_only_once_the_job_reports_progress(manager: JobManager) -> None:
    quiet = JobCard(manager.start("1", "thread"), manager)
    go = threading.Event()
    job = manager.start(WAIT_FOR_GO + "from jupyter_rjobs import progress\nprogress(1, 4, 'one')\n"
                        "while not done.is_set():\n    time.sleep(0.01)", "thread", namespace={"go": go, "done": (done := threading.Event())})
    card = JobCard(job, manager)
    try:
        assert card._bar.layout.display == "none" and wait_until(lambda: quiet.final, 30) and quiet._bar.layout.display == "none"
        go.set()
        assert wait_until(lambda: card._bar.layout.display == "" and card._bar.value == 0.25, 30)
        assert card._bar.description == "25%"
        done.set()
        assert wait_until(lambda: card.final, 30) and card._bar.bar_style == "success"
    finally:
        card.close()
        quiet.close()
