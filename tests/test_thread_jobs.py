"""What only thread jobs do: output routing by thread, and the limit of stopping a thread."""

from __future__ import annotations

import io
import sys
import threading
import time

from helpers import wait_until

from jupyter_rjobs import EventKind, JobState, RecordKind


def test_job_output_never_lands_in_the_notebooks_stream(manager, monkeypatch):
    notebook = io.StringIO()
    monkeypatch.setattr(sys, "stdout", notebook)
    job = manager.start("import time\nfor i in range(5):\n    print('job', i)\n    time.sleep(0.02)", "thread")
    for i in range(5):
        print("notebook", i)
        time.sleep(0.02)
    job.result(timeout=30)
    lines = notebook.getvalue().splitlines()
    assert lines == [f"notebook {i}" for i in range(5)]
    records = manager.receive(job)
    assert "".join(r.data for r in records) == "".join(f"job {i}\n" for i in range(5))


def test_the_thread_runs_on_a_copy_of_the_namespace(manager):
    namespace = {"shared": [1]}
    job = manager.start("shared.append(2)\nshared = 'rebound'\nshared", "thread", namespace=namespace)
    assert job.result(timeout=30) == "rebound"
    assert namespace["shared"] == [1, 2]  # a shallow copy: the same list object, its own binding


def test_a_thread_inside_c_code_stops_when_it_returns_to_python(make_manager):
    """The documented limit: the stop lands at the next bytecode, after the C call returns."""
    manager = make_manager(stop_grace=0.2)
    job = manager.start("import time\ntime.sleep(1.5)\nprint('not reached')", "thread")
    assert wait_until(lambda: job.state is JobState.Running)
    time.sleep(0.1)
    manager.stop(job)
    assert job.state is JobState.Stopping  # still inside time.sleep
    assert wait_until(lambda: job.state is JobState.Stopped, timeout=10)
    assert all(r.kind is not RecordKind.STDOUT for r in manager.receive(job))


def test_a_stopped_thread_is_reused_for_the_next_job(manager):
    job = manager.start("while True:\n    pass", "thread")
    assert wait_until(lambda: job.state is JobState.Running)
    manager.stop(job)
    before = threading.active_count()
    assert manager.start("threading_ok = 1\n'ok'", "thread").result(timeout=30) == "ok"
    assert threading.active_count() <= before + 1


def test_a_listener_that_subscribes_while_a_job_runs_hears_the_rest_in_order(manager):
    """Events are made only while someone listens: a listener that comes late hears what follows,
    one that left hears nothing more, and receiving does not depend on either."""
    gate = threading.Event()
    job = manager.start("gate.wait(30)\nprint('after')\n'done'", "thread", namespace={"gate": gate})
    assert wait_until(lambda: job.state is JobState.Running)
    events = []
    unsubscribe = manager.subscribe(events.append)
    gate.set()
    assert job.result(timeout=30) == "done"
    assert wait_until(lambda: len(events) >= 3)  # the end's event follows the Future's result
    unsubscribe()
    heard = [(e.kind, e.record.kind if e.record is not None else e.new_state) for e in events if e.job is job]
    assert heard == [(EventKind.RECORD, RecordKind.STDOUT), (EventKind.RECORD, RecordKind.VALUE),
                     (EventKind.STATE, JobState.Completed)]
    assert len(events) == 3
    later = manager.start("'later'", "thread")
    assert [r.data for r in manager.receive(later, wait=True, timeout=30)] == ["later"]
    assert len(events) == 3  # unsubscribed: nothing more
    assert [r.data for r in manager.receive(job)] == ["after\n", "done"]
