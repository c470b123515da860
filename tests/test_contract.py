"""The job contract: what every kind of job does, run against every backend (see ALL_KINDS).

Only the plain API is used here; test_magics.py drives the same through IPython.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time

import pytest
from helpers import wait_until

from jupyter_rjobs import (
    EventKind,
    HostError,
    JobCodeError,
    JobError,
    JobManager,
    JobNotFoundError,
    JobState,
    JobStateError,
    JobStoppedError,
    RecordKind,
    UnsendableVariableError,
)


def kinds(records):
    return [r.kind for r in records]


def texts(records, kind=RecordKind.STDOUT):
    return "".join(r.data for r in records if r.kind is kind)


# -- values and output --------------------------------------------------------------------
def test_last_expression_is_the_value(start):
    job = start("x = 20\nx + 1")
    assert job.result(timeout=30) == 21
    assert job.state is JobState.Completed
    records = start.manager.receive(job)
    assert [r.data for r in records if r.kind is RecordKind.VALUE] == [21]


def test_statements_only_give_no_value(start):
    job = start("y = 1")
    assert job.result(timeout=30) is None
    assert start.manager.receive(job) == []
    assert job.has_more_data is False


def test_interleaved_output_keeps_its_order(start):
    job = start(
        "import sys\n"
        "print('out 1')\n"
        "print('err 1', file=sys.stderr)\n"
        "display({'text/plain': 'shown'}, raw=True)\n"
        "print('out 2')\n"
        "sys.stderr.write('err 2\\n')\n"
        "'value'"
    )
    job.result(timeout=30)
    records = start.manager.receive(job)
    assert kinds(records) == [
        RecordKind.STDOUT,
        RecordKind.STDERR,
        RecordKind.DISPLAY,
        RecordKind.STDOUT,
        RecordKind.STDERR,
        RecordKind.VALUE,
    ]
    assert [r.data for r in records[:2]] == ["out 1\n", "err 1\n"]
    assert records[2].data["data"]["text/plain"] == "shown"
    assert [r.seq for r in records] == sorted(r.seq for r in records)


def test_rich_repr_of_display_is_a_mime_bundle(start):
    job = start(
        "class Rich:\n"
        "    def _repr_html_(self):\n"
        "        return '<b>rich</b>'\n"
        "display(Rich())\n"
    )
    job.result(timeout=30)
    (record,) = start.manager.receive(job)
    assert record.kind is RecordKind.DISPLAY
    assert record.data["data"]["text/html"] == "<b>rich</b>"
    assert "text/plain" in record.data["data"]


def test_progress_is_a_record(start):
    job = start("from jupyter_rjobs import progress\nfor i in range(3):\n    progress(i + 1, 3, 'step')")
    job.result(timeout=30)
    records = start.manager.receive(job)
    assert [r.data["current"] for r in records if r.kind is RecordKind.PROGRESS] == [1, 2, 3]
    assert records[-1].data == {"current": 3, "total": 3, "message": "step"}


# -- receive, keep, HasMoreData -----------------------------------------------------------
def test_receive_without_keep_returns_each_record_once(start):
    job = start("print('a')\nprint('b')\n7")
    job.result(timeout=30)
    first = start.manager.receive(job)
    assert texts(first) == "a\nb\n"
    assert start.manager.receive(job) == []
    assert job.has_more_data is False


def test_keep_leaves_records_for_the_next_receive(start):
    job = start("print('a')\n7")
    job.result(timeout=30)
    kept = start.manager.receive(job, keep=True)
    assert kinds(kept) == [RecordKind.STDOUT, RecordKind.VALUE]
    assert job.has_more_data is True
    again = start.manager.receive(job, keep=True)
    assert [r.seq for r in again] == [r.seq for r in kept]
    taken = start.manager.receive(job)
    assert [r.seq for r in taken] == [r.seq for r in kept]
    assert start.manager.receive(job) == []
    assert job.has_more_data is False


def test_has_more_data_transitions(start):
    job = start("import time\ntime.sleep(0.5)\nprint('done')")
    assert job.has_more_data is True  # running (or about to): more may come
    job.result(timeout=30)
    assert job.has_more_data is True  # ended with unreceived output
    start.manager.receive(job)
    assert job.has_more_data is False
    quiet = start("z = 1")
    quiet.result(timeout=30)
    assert quiet.has_more_data is False  # ended with nothing to receive


def test_receive_wait_streams_everything_in_order(start):
    job = start("import time\nfor i in range(10):\n    print(i)\n    time.sleep(0.02)\n'end'")
    records = start.manager.receive(job, wait=True)
    assert texts(records) == "".join(f"{i}\n" for i in range(10))
    assert records[-1].kind is RecordKind.VALUE and records[-1].data == "end"
    assert job.state is JobState.Completed


def test_follow_then_receive_loses_nothing(start):
    job = start("import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.05)")
    seen = []
    for record in start.manager.follow(job):
        seen.append(record)
        if len(seen) == 2:
            break  # the reader stops half way
    job.result(timeout=30)
    rest = start.manager.receive(job)
    assert texts(seen) + texts(rest) == "".join(f"{i}\n" for i in range(6))


def test_receive_wait_auto_remove(start):
    job = start("print('x')")
    records = start.manager.receive(job, wait=True, auto_remove=True)
    assert texts(records) == "x\n"
    with pytest.raises(JobNotFoundError):
        start.manager.get(job.id)


# -- waiting ------------------------------------------------------------------------------
def test_wait_timeout_says_which_jobs_still_run(start):
    slow = start("import time\nwhile True:\n    time.sleep(0.05)", name="slow")
    quick = start("1", name="quick")
    quick.result(timeout=30)
    result = start.manager.wait([slow, quick], timeout=0.3)
    assert list(result) == [quick]
    assert result.still_running == [slow]
    assert result.timed_out is True
    start.manager.stop(slow)


def test_wait_any_returns_when_one_finishes(start):
    slow = start("import time\nwhile True:\n    time.sleep(0.05)")
    quick = start("import time\ntime.sleep(0.1)")
    result = start.manager.wait([slow, quick], any=True, timeout=30)
    assert list(result) == [quick]
    assert result.still_running == [slow]
    assert result.timed_out is False
    start.manager.stop(slow)


def test_wait_for_all(start):
    jobs = [start(f"import time\ntime.sleep(0.05 * {i})\n{i}") for i in range(3)]
    result = start.manager.wait(jobs, timeout=30)
    assert list(result) == jobs and result.still_running == [] and not result.timed_out


# -- stopping -----------------------------------------------------------------------------
def test_stop_a_job_stuck_in_a_python_loop(start):
    job = start("i = 0\nwhile True:\n    i += 1")
    assert start.manager.wait(job, timeout=0.3).still_running == [job]
    states = []
    start.manager.subscribe(lambda e: states.append(e.new_state) if e.job is job and e.kind is EventKind.STATE else None)
    start.manager.stop(job)
    assert job.state is JobState.Stopped
    assert JobState.Stopping in states and states[-1] is JobState.Stopped
    with pytest.raises(JobStoppedError):
        job.result(timeout=1)
    with pytest.raises(concurrent.futures.CancelledError):  # JobStoppedError is one
        job.result(timeout=1)
    assert job.end_time is not None


def test_stop_a_job_that_has_not_started(make_manager):
    manager = make_manager(max_thread_jobs=1, max_process_jobs=1)
    for kind in ("thread", "process"):
        blocker = manager.start("import time\nwhile True:\n    time.sleep(0.05)", kind)
        queued = manager.start("print('never')", kind)
        assert queued.state is JobState.NotStarted
        manager.stop(queued)
        assert queued.state is JobState.Stopped
        manager.stop(blocker)
        assert manager.receive(queued) == []


def test_job_is_a_future(start):
    called = []
    job = start("import time\ntime.sleep(0.1)\n'v'")
    job.add_done_callback(lambda f: called.append(f.result()))
    assert isinstance(job, concurrent.futures.Future)
    assert job.result(timeout=30) == "v"
    assert job.done() and job.exception() is None
    assert called == ["v"]


# -- failures -----------------------------------------------------------------------------
def test_an_exception_fails_the_job_with_its_traceback(start):
    job = start("def inner():\n    raise ValueError('boom')\ninner()")
    with pytest.raises(JobError) as caught:
        job.result(timeout=30)
    assert job.state is JobState.Failed
    error = job.error
    assert error is caught.value
    assert (error.ename, error.evalue) == ("ValueError", "boom")
    assert "raise ValueError('boom')" in error.traceback_text
    assert "inner()" in error.traceback_text
    text = error.traceback_text  # the agent's own frames are cut (here, and as rjobs_agent on hosts)
    assert "jupyter_rjobs/agent/" not in text and "rjobs_agent" not in text and "execute.py" not in text
    records = start.manager.receive(job)
    assert kinds(records) == [RecordKind.ERROR]
    assert records[0].data["ename"] == "ValueError"


def test_output_before_an_error_is_kept(start):
    job = start("print('before')\n1/0")
    job.exception(timeout=30)
    records = start.manager.receive(job)
    assert kinds(records) == [RecordKind.STDOUT, RecordKind.ERROR]


def test_a_syntax_error_creates_no_job(start):
    with pytest.raises(JobCodeError, match="line 2"):
        start("x = 1\nx = (")
    assert start.manager.list() == []
    job = start("1")
    assert job.id == 1  # no id was used up


# -- throttling ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["thread", "process"])
def test_throttling_runs_at_most_n_at_once(make_manager, kind):
    manager = make_manager(max_thread_jobs=2, max_process_jobs=2)
    jobs = [manager.start("import time\ntime.sleep(0.3)", kind, name=f"j{i}") for i in range(4)]
    assert [j.state for j in jobs[2:]] == [JobState.NotStarted, JobState.NotStarted]
    manager.wait(jobs, timeout=60)
    assert all(j.state is JobState.Completed for j in jobs)
    for job in jobs:  # when each job began, how many were running (itself included)
        running_then = [o for o in jobs if o.begin_time <= job.begin_time < o.end_time]
        assert len(running_then) <= 2
    assert min(j.begin_time for j in jobs[2:]) >= min(j.end_time for j in jobs[:2])  # waited for a slot


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_throttled_jobs_start_in_order(make_manager, kind):
    manager = make_manager(max_thread_jobs=1, max_process_jobs=1)
    jobs = [manager.start("import time\ntime.sleep(0.05)", kind, name=f"j{i}") for i in range(4)]
    manager.wait(jobs, timeout=60)
    for earlier, later in zip(jobs, jobs[1:]):
        assert earlier.end_time <= later.begin_time


# -- listing, removing, events ------------------------------------------------------------
def test_list_filters(start):
    a = start("1", name="alpha")
    b = start("import time\nwhile True:\n    time.sleep(0.05)", name="beta")
    a.result(timeout=30)
    manager = start.manager
    assert manager.list() == [a, b]
    assert manager.list("al*") == [a]
    assert manager.list(state="Completed") == [a]
    assert manager.list(state=JobState.Running) in ([b], [])  # b may still be starting
    assert manager.list(has_more_data=True) == [a, b]
    assert manager.get("beta") is b and manager.get(b.id) is b and manager.get(str(b.id)) is b
    manager.stop(b)


def test_remove_refuses_a_running_job_unless_forced(start):
    running = start("import time\nwhile True:\n    time.sleep(0.05)")
    done = start("1")
    done.result(timeout=30)
    with pytest.raises(JobStateError, match="--force"):
        start.manager.remove([done, running])
    assert start.manager.list() == [running, done]  # nothing was removed
    start.manager.remove([done, running], force=True)
    assert running.state is JobState.Stopped
    assert start.manager.list() == []


def test_events_tell_what_happens(start):
    events = []
    start.manager.subscribe(events.append)
    job = start("print('hi')")
    job.result(timeout=30)
    start.manager.remove(job)
    kinds_seen = [e.kind for e in events if e.job is job]
    assert kinds_seen[0] is EventKind.ADDED and kinds_seen[-1] is EventKind.REMOVED
    states = [e.new_state for e in events if e.kind is EventKind.STATE]
    assert states == [JobState.Running, JobState.Completed]
    assert any(e.kind is EventKind.RECORD and e.record.data == "hi\n" for e in events)


def test_job_properties(start):
    job = start("import time\ntime.sleep(0.05)\n" + "x = 1\n" * 40, name="props")
    job.result(timeout=30)
    assert job.name == "props" and job.location == start.location and job.children == []
    assert len(job.command) <= 60 and job.command.startswith("import time")
    assert str(job.state) == "Completed"
    assert job.begin_time <= job.end_time
    assert job.instance_id.version == 4


# -- variables ----------------------------------------------------------------------------
def test_the_job_sees_notebook_variables(start):
    namespace = {"data": [1, 2, 3], "scale": 10}
    job = start("sum(data) * scale", namespace=namespace)
    assert job.result(timeout=30) == 60


def test_the_job_does_not_change_notebook_variables(start):
    namespace = {"data": [1, 2, 3]}
    job = start("data = 'replaced'\nnew_name = 1", namespace=namespace)
    job.result(timeout=30)
    assert namespace == {"data": [1, 2, 3]}


def test_notebook_functions_lambdas_and_classes_travel(start_sending):
    exec_ns: dict = {"__name__": "__main__"}
    exec(
        "class Point:\n"
        "    def __init__(self, x): self.x = x\n"
        "def double(p): return Point(p.x * 2)\n"
        "square = lambda v: v * v\n",
        exec_ns,
    )
    namespace = {k: exec_ns[k] for k in ("Point", "double", "square")}
    host_python = _host_python(start_sending)
    if host_python and host_python.split(".")[:2] != sys.version.split()[0].split(".")[:2]:
        # code objects load only on the same Python version (the oldest leg's 3.9 kernel, 3.11 hosts):
        # refused at start, saying so, and no job is created
        before = len(start_sending.manager.list())
        with pytest.raises(HostError, match=r"\(defined in the notebook\) can only be sent to the same Python version") as refused:
            start_sending("square(double(Point(3)).x)", namespace=namespace)
        assert all(repr(name) in str(refused.value) for name in namespace) and host_python in str(refused.value)
        assert len(start_sending.manager.list()) == before
        return
    job = start_sending("square(double(Point(3)).x)", namespace=namespace)
    assert job.result(timeout=30) == 36


def _host_python(starter) -> str:
    """The Python version the starter's host runs, as the host itself reported it ('' for local kinds)."""
    if starter.host is None:
        return ""
    return starter.manager.backend("remote").connection(starter.host).python_version


def test_push_names_the_variables_and_no_push_sends_none(start_sending):
    namespace = {"a": 1, "b": 2}
    pushed = start_sending("globals().get('a'), globals().get('b')", namespace=namespace, push=["b"])
    assert pushed.result(timeout=30) == (None, 2)
    none = start_sending("'a' in globals()", namespace=namespace, push=[])
    assert none.result(timeout=30) is False


def test_an_unsendable_variable_is_named_and_no_job_starts(start_sending):
    namespace = {"gen": (i for i in range(3)), "ok": 1}
    with pytest.raises(UnsendableVariableError, match="'gen'"):
        start_sending("ok + sum(gen)", namespace=namespace)
    assert start_sending.manager.list() == []


def test_numpy_arrays_travel_both_ways(manager):
    import numpy as np  # in the test extra
    array = np.arange(1_000_000, dtype=np.float64)
    job = manager.start("array * 2", "process", namespace={"array": array})
    result = job.result(timeout=60)
    assert result.dtype == np.float64 and result.shape == array.shape
    assert np.array_equal(result, array * 2)


def test_modules_travel_by_name(start_sending):
    import json

    job = start_sending("json.dumps([1])", namespace={"json": json})
    assert job.result(timeout=30) == "[1]"


def test_an_unsendable_value_fails_the_job_saying_why(start_sending):
    job = start_sending("(i for i in range(3))")
    with pytest.raises(JobError, match="cannot be sent back"):
        job.result(timeout=30)


# -- a manager that is shut down -----------------------------------------------------------
def test_shutdown_stops_running_jobs(make_manager):
    manager: JobManager = make_manager()
    jobs = [manager.start("import time\nwhile True:\n    time.sleep(0.05)", kind) for kind in ("thread", "process")]
    time.sleep(0.2)
    manager.shutdown()
    assert [j.state for j in jobs] == [JobState.Stopped, JobState.Stopped]
    with pytest.raises(Exception, match="shut down"):
        manager.start("1", "thread")


def test_an_observer_may_ask_a_finished_job_for_its_result(start):
    seen = []

    def on_event(event):
        finished = event.new_state is not None and event.new_state.finished
        if event.job.name == "observed" and finished:
            seen.append(event.job.result(timeout=5))  # must not deadlock: the Future is settled first

    start.manager.subscribe(on_event)
    job = start("40 + 2", name="observed")
    assert job.result(timeout=30) == 42
    assert wait_until(lambda: seen == [42])
