"""The job panel in plain Python and in a real IPython shell (widgets without a front end),
and %rjob panel's terminal form. A real kernel drives it in test_panel_kernel.py."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import pytest
from IPython.core.error import UsageError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import wait_until  # noqa: E402

import jupyter_rjobs  # noqa: E402
from jupyter_rjobs import EventKind, Job, JobEvent, JobKind, JobManager, JobState  # noqa: E402
from jupyter_rjobs.ipython.panel import JobPanel  # noqa: E402


@pytest.fixture
def make_panel() -> Iterator[Callable[..., JobPanel]]:
    made: list[JobPanel] = []

    def make(manager: JobManager, **options: Any) -> JobPanel:
        options.setdefault("interval", 0.05)
        made.append(jupyter_rjobs.panel(manager, **options))
        return made[-1]

    yield make
    for panel in made:
        panel.close()


def row_of(panel: JobPanel, job: Job) -> Any:
    for row in panel._rows[: panel._rows_in_use]:
        if row.job is job:
            return row
    return None


def shown_state(panel: JobPanel, job: Job) -> str | None:
    row = row_of(panel, job)
    return None if row is None else row.cells["State"].value


def shows(panel: JobPanel, job: Job, state: str) -> bool:
    return f"data-state='{state}'" in (shown_state(panel, job) or "")


def panel_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rjob-panel")]


# --------------------------------------------------------------------------- the rows
def test_rows_follow_the_jobs_states(manager: JobManager, make_panel: Callable[..., JobPanel]) -> None:
    gate = threading.Event()
    panel = make_panel(manager)
    job = manager.start("gate.wait(30)\n'done'", "thread", name="gated", namespace={"gate": gate})
    assert wait_until(lambda: shows(panel, job, "Running")), shown_state(panel, job)
    row = row_of(panel, job)
    assert "rjob-spin" in row.cells["State"].value  # visibly active while it runs
    assert [row.cells[c].value for c in ("Id", "Name", "Type", "Location", "HasMoreData")] == [
        str(job.id), "gated", "ThreadJob", "localhost", "True"
    ]
    assert "gate.wait(30)" in row.cells["Command"].value
    gate.set()
    assert wait_until(lambda: shows(panel, job, "Completed")), shown_state(panel, job)
    assert "rjob-spin" not in row.cells["State"].value
    assert row.cells["Elapsed"].value.endswith("s")
    assert "1 jobs (1 Completed)" in panel.summary.value


def test_a_progress_bar_shows_the_latest_progress(manager: JobManager, make_panel: Callable[..., JobPanel]) -> None:
    gate = threading.Event()
    panel = make_panel(manager)
    code = "from jupyter_rjobs import progress\nprogress(1, 4, 'quarter')\nprogress(2, 4, 'half')\ngate.wait(30)"
    job = manager.start(code, "thread", namespace={"gate": gate})
    assert wait_until(lambda: row_of(panel, job) is not None and "half" in row_of(panel, job).progress.value)
    row = row_of(panel, job)
    assert row.bar.value == 0.5 and row.bar.layout.visibility == "visible"
    assert row.progress.value == "50% half"
    plain = manager.start("1", "thread")
    assert wait_until(lambda: shows(panel, plain, "Completed"))
    assert row_of(panel, plain).bar.layout.visibility == "hidden"  # no progress: no bar
    gate.set()


def test_a_parent_expands_to_show_its_children(manager: JobManager, make_panel: Callable[..., JobPanel]) -> None:
    parent = _fan_out_parent(manager, ["hostA", "hostB"])
    panel = make_panel(manager)
    assert wait_until(lambda: row_of(panel, parent) is not None)
    assert [row.job for row in panel._rows[: panel._rows_in_use]] == [parent]  # collapsed
    row = row_of(panel, parent)
    assert row.expand.description == "▸" and not row.expand.disabled
    row.expand.click()
    assert wait_until(lambda: [r.job for r in panel._rows[: panel._rows_in_use]] == [parent, *parent.children])
    child_row = row_of(panel, parent.children[1])
    assert "↳" in child_row.cells["Id"].value and child_row.cells["Location"].value == "hostB"
    parent.children[0].set_state(JobState.Running)
    assert wait_until(lambda: shows(panel, parent.children[0], "Running") and shows(panel, parent, "Running"))
    child_row.remove.click()  # disabled in a front end; a click that arrives anyway says why
    assert "goes with its parent" in panel.status.value
    row.expand.click()
    assert wait_until(lambda: [r.job for r in panel._rows[: panel._rows_in_use]] == [parent])
    for child in parent.children:
        child.set_state(JobState.Completed)


def _fan_out_parent(manager: JobManager, hosts: list[str]) -> Job:
    """A parent job with a child per host, as manager.start makes for several hosts (which needs
    SSH hosts): the same Job objects and events, without running anything."""
    with manager._lock:
        first = manager._next_id
        manager._next_id += 1 + len(hosts)
    callbacks = {"on_state": manager._job_state_changed, "on_record": manager._job_record}
    parent = Job(first, JobKind.REMOTE, "import platform; platform.node()", "fan", location=",".join(hosts), **callbacks)
    for offset, host in enumerate(hosts, start=1):
        parent.children.append(Job(first + offset, JobKind.REMOTE, parent.code, f"fan:{host}", location=host, parent=parent, **callbacks))
    manager.backend("remote")  # throttles exist for the kind
    with manager._lock:
        manager._jobs[first] = parent
    manager._emit(JobEvent(EventKind.ADDED, parent))
    return parent


# --------------------------------------------------------------------------- actions
def test_receive_puts_the_output_in_the_panel_in_order(manager: JobManager, make_panel: Callable[..., JobPanel]) -> None:
    panel = make_panel(manager)
    code = "import sys\nprint('one')\nsys.stderr.write('two\\n')\nprint('three')\ndisplay('shown')\n42"
    job = manager.start(code, "thread", name="talker")
    job.result(timeout=10)
    assert wait_until(lambda: shows(panel, job, "Completed"))
    row_of(panel, job).receive.click()
    outputs = panel.output.outputs
    assert [(o["output_type"], o.get("name"), o.get("text") or o.get("data", {}).get("text/plain")) for o in outputs] == [
        ("stream", "stdout", "--- job 1 (talker) ---\none\n"),
        ("stream", "stderr", "two\n"),
        ("stream", "stdout", "three\n"),
        ("display_data", None, "'shown'"),
        ("display_data", None, "42"),
    ]
    assert "received 5 record(s)" in panel.status.value
    assert wait_until(lambda: row_of(panel, job).cells["HasMoreData"].value == "False")
    row_of(panel, job).receive.click()  # a second click: nothing new, said so
    assert panel.status.value == "job 1 (talker): nothing new to receive" and len(panel.output.outputs) == 5
    failing = manager.start("1 / 0", "thread")
    assert wait_until(lambda: shows(panel, failing, "Failed"))
    row_of(panel, failing).receive.click()
    assert panel.output.outputs[-1]["output_type"] == "error" and panel.output.outputs[-1]["ename"] == "ZeroDivisionError"
    panel.clear_output()
    assert panel.output.outputs == ()


def test_stop_and_remove_from_the_panel(manager: JobManager, make_panel: Callable[..., JobPanel]) -> None:
    panel = make_panel(manager)
    job = manager.start("import time\nwhile True:\n    time.sleep(0.02)", "thread", name="forever")
    assert wait_until(lambda: shows(panel, job, "Running"))
    row = row_of(panel, job)
    row.remove.click()  # a running job is not removed
    assert panel.status.value == "job 1 (forever) is Running: stop it first" and manager.list() == [job]
    row.stop.click()
    row.stop.click()  # a double click
    assert wait_until(lambda: shows(panel, job, "Stopped")), shown_state(panel, job)
    assert job.state is JobState.Stopped
    row.stop.click()
    assert panel.status.value == "job 1 (forever) has already ended (Stopped); nothing to stop"
    row.remove.click()
    assert panel.status.value == "removed job 1 (forever)" and manager.list() == []
    assert wait_until(lambda: panel._rows_in_use == 0 and panel._rows_box.children == ())


def test_actions_on_a_job_removed_meanwhile_say_so(manager: JobManager, make_panel: Callable[..., JobPanel]) -> None:
    panel = make_panel(manager, interval=60.0)  # slow redraws: the row still shows the job when it is gone
    job = manager.start("1", "thread", name="gone")
    job.result(timeout=10)
    panel.refresh()
    assert wait_until(lambda: row_of(panel, job) is not None)
    manager.remove(job)
    row = row_of(panel, job)
    for button, verb in ((row.receive, "receive"), (row.stop, "stop"), (row.remove, "remove")):
        button.click()
        assert panel.status.value == f"job 1 (gone) was removed; nothing to {verb}"


def test_the_state_filter_and_pages(manager: JobManager, make_panel: Callable[..., JobPanel]) -> None:
    done = [manager.start("1", "thread") for _ in range(5)]
    failed = [manager.start("1 / 0", "thread") for _ in range(2)]
    manager.wait(done + failed, timeout=10)
    panel = make_panel(manager, page_size=3)
    assert wait_until(lambda: panel._rows_in_use == 3 and "page 1 of 3" in panel.summary.value)
    panel._next.click()
    panel._next.click()
    assert wait_until(lambda: [r.job for r in panel._rows[: panel._rows_in_use]] == failed[1:])
    assert panel._next.disabled and not panel._previous.disabled
    panel._filter.value = "Failed"
    assert wait_until(lambda: [r.job for r in panel._rows[: panel._rows_in_use]] == failed)
    assert len(panel._rows) == 3  # the rows were reused, not rebuilt
    panel._filter.value = "All"
    assert wait_until(lambda: [r.job for r in panel._rows[: panel._rows_in_use]] == done[:3])


# --------------------------------------------------------------------------- scale and cleanup
def test_a_thousand_jobs_are_coalesced_into_few_redraws(manager: JobManager, make_panel: Callable[..., JobPanel]) -> None:
    interval = 0.25
    events = []
    manager.subscribe(events.append)
    panel = make_panel(manager, interval=interval)
    began = time.monotonic()
    jobs = [manager.start("1", "thread") for _ in range(1000)]
    manager.wait(jobs, timeout=60)
    assert wait_until(lambda: panel.summary.value.startswith("1000 jobs (1000 Completed)"), timeout=30), panel.summary.value
    spent = time.monotonic() - began
    # one redraw at most per interval (plus the first drawing and one in progress), whatever the event count
    assert panel.updates <= spent / interval + 3, (panel.updates, spent, len(events))
    assert len(events) >= 3000 and panel.updates < len(events) / 20
    assert panel._rows_in_use == 50 and len(panel._rows) == 50  # one page of pooled rows, not 1000


def test_closing_a_panel_unsubscribes_and_leaves_no_thread(manager: JobManager, make_panel: Callable[..., JobPanel]) -> None:
    listeners = len(manager._listeners)
    first, second = make_panel(manager), make_panel(manager)
    assert len(manager._listeners) == listeners + 2 and len(panel_threads()) == 2
    job = manager.start("import time\nwhile True:\n    time.sleep(0.02)", "thread")
    assert wait_until(lambda: shows(first, job, "Running") and shows(second, job, "Running"))
    row_of(first, job).stop.click()  # a stop in progress when the panel closes is waited for
    first.close()
    first.close()  # idempotent
    assert len(manager._listeners) == listeners + 1
    assert first.comm is None and all(w.comm is None for w in first._rows[0].cells.values())
    assert job.state is JobState.Stopped
    assert wait_until(lambda: shows(second, job, "Stopped"))  # the other panel lives on
    second.close()
    assert len(manager._listeners) == listeners
    assert panel_threads() == []


def test_a_sessions_section_when_the_manager_has_sessions(make_panel: Callable[..., JobPanel]) -> None:
    class Session:
        def __init__(self, host: str) -> None:
            self.host, self.state = host, "Opened"

        def disconnect(self) -> None:
            self.state = "Disconnected"

        def connect(self) -> None:
            self.state = "Opened"

    class SelfConnecting(JobManager):  # sessions that connect and disconnect themselves
        connect = disconnect = None

        def __init__(self) -> None:
            super().__init__(warm_workers=0)
            self.listed = [Session("server01"), Session("server02")]

        def sessions(self) -> list[Session]:
            return list(self.listed)

    plain = JobManager(warm_workers=0)  # no sessions (or, with the sessions milestone, none open)
    assert make_panel(plain)._sessions_box.children == ()  # nothing shown
    plain.shutdown()
    manager = SelfConnecting()
    panel = make_panel(manager)
    assert wait_until(lambda: len(panel._sessions_box.children) == 3)
    first = panel._session_rows[0]
    assert "server01" in first.label.value and "Opened" in first.label.value
    first.disconnect.click()
    assert wait_until(lambda: "Disconnected" in first.label.value), first.label.value
    assert manager.listed[0].state == "Disconnected" and panel.status.value == "disconnect: done"
    panel.close()
    manager.shutdown()


def test_sessions_listed_by_a_method_and_connected_by_the_manager(make_panel: Callable[..., JobPanel]) -> None:
    class Session:
        def __init__(self, name: str, host: str) -> None:
            self.name, self.host, self.state = name, host, "Opened"

    class SessionManager(JobManager):  # the shape of the sessions milestone: manager.sessions(), manager.disconnect(s)
        connect = None  # (so that a Connect nobody can do is tried)

        def __init__(self) -> None:
            super().__init__(warm_workers=0)
            self._sessions = [Session("work", "server01")]

        def sessions(self) -> list[Session]:
            return list(self._sessions)

        def disconnect(self, session: Session) -> None:
            session.state = "Disconnected"

    manager = SessionManager()
    try:
        panel = make_panel(manager)
        assert wait_until(lambda: len(panel._sessions_box.children) == 2)
        row = panel._session_rows[0]
        assert "<b>work</b> on server01 Opened" == row.label.value
        row.disconnect.click()
        assert wait_until(lambda: "Disconnected" in row.label.value), row.label.value
        row.connect.click()  # neither the manager nor the session can: said, not raised
        assert panel.status.value == "this session cannot connect"
    finally:
        manager.shutdown()


def test_a_bad_interval_is_refused(manager: JobManager) -> None:
    with pytest.raises(jupyter_rjobs.RJobError, match="interval must be above 0"):
        jupyter_rjobs.panel(manager, interval=0)
    assert manager._listeners == []


# --------------------------------------------------------------------------- IPython
def test_receiving_in_a_cell_updates_the_panel(ip: Any, make_panel: Callable[..., JobPanel]) -> None:
    from jupyter_rjobs.ipython.extension import get_manager

    manager = get_manager(ip)
    panel = make_panel(manager)
    ip.run_cell("%rjob start --thread --name quick -- 6 * 7")
    job = manager.get("quick")
    job.result(timeout=10)
    assert wait_until(lambda: shows(panel, job, "Completed") and row_of(panel, job).cells["HasMoreData"].value == "True")
    ip.run_cell("%rjob receive quick")  # no event for this; the shell's post_execute redraws the panel
    assert wait_until(lambda: row_of(panel, job).cells["HasMoreData"].value == "False")
    panel.close()
    assert panel.refresh not in ip.events.callbacks["post_execute"]


def test_panel_magic_refuses_a_bad_interval(ip: Any) -> None:
    with pytest.raises(UsageError, match="--interval must be above 0"):
        ip.run_line_magic("rjob", "panel --interval 0")


class Screen(io.StringIO):
    """A stand-in terminal (not a tty) that wakes a waiter when some text has appeared."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def write(self, text: str) -> int:
        written = super().write(text)
        with self.changed:
            self.changed.notify_all()
        return written

    def wait_for(self, text: str, timeout: float = 20.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: text in self.getvalue(), timeout)


def test_in_a_terminal_the_panel_is_a_live_table_until_ctrl_c(ip: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_rjobs.ipython.extension import get_manager

    manager = get_manager(ip)
    listeners = len(manager._listeners)
    gate = threading.Event()
    ip.user_ns["gate"] = gate
    ip.run_cell("%%rjob start --thread --name gated\nfrom jupyter_rjobs import progress\nprogress(1, 4)\ngate.wait(30)")
    screen = Screen()
    monkeypatch.setattr(sys, "stdout", screen)
    seen: dict[str, bool] = {}

    def operator() -> None:  # what a person watching the terminal does
        seen["running"] = screen.wait_for("Running")
        gate.set()
        seen["completed"] = screen.wait_for("Completed")
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl-C

    helper = threading.Thread(target=operator)
    helper.start()
    result = ip.run_line_magic("rjob", "panel --interval 0.05")
    helper.join(30)
    text = screen.getvalue()
    assert seen == {"running": True, "completed": True}, text
    assert result is None and text.rstrip().endswith("(live table stopped)")
    assert text.index("Running") < text.index("Completed")
    assert "Progress" in text and "25%" in text and "(live: Ctrl-C to stop)" in text
    assert "widget" not in text.lower() and "Traceback" not in text
    assert len(manager._listeners) == listeners  # unsubscribed
    assert "(no jobs)" not in text
    table = ip.run_line_magic("rjob", "list")  # list stays a static table
    assert "gated" in str(table)
