"""Records of any size, and spools that are not what they should be (issue 14, defects 1, 6, 11).

A job whose output, display, error or cell is a megabyte or more completes or fails as it
should in every backend and cache, and never hangs; a reader that meets what it cannot apply
fails the job saying why; a corrupt or torn spool fails its job saying where, delivers what
came before and leaves the host's server serving; a remote-cache spool is received a part at
a time. Process jobs need nothing; the rest runs on the real-sshd lab.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import pid_alive, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_rjobs import JobError, JobState, RecordKind
from jupyter_rjobs.agent.protocol import write_frame
from jupyter_rjobs.agent.spool import Scanner

MB2 = 2_000_000
BIG_CODES = {
    "print": ("print('y' * 2_000_000)", JobState.Completed),
    "display": ("from IPython.display import HTML, display\ndisplay(HTML('h' * 2_000_000))", JobState.Completed),
    "raise": ("raise ValueError('e' * 2_000_000)", JobState.Failed),
}
# hosts have no IPython: jobs there display through the agent's display() and _repr_html_
HOST_DISPLAY = ("from jupyter_rjobs import display\nclass HTML:\n    def __init__(self, text):\n        self.text = text\n"
                "    def _repr_html_(self):\n        return self.text\ndisplay(HTML('h' * 2_000_000))")
BIG_CELL = "s = '" + "c" * (1_200_000) + "'\nprint(len(s))\nlen(s)"  # a cell of 1.2 MB


def check_big(job, records, what: str) -> None:
    """The job ended as it should and its one big record came whole."""
    state = BIG_CODES[what][1]
    assert job.state is state, (job.state, job.error)
    if what == "print":
        assert "".join(r.data for r in records if r.kind is RecordKind.STDOUT) == "y" * MB2 + "\n"
    elif what == "display":
        [shown] = [r for r in records if r.kind is RecordKind.DISPLAY]
        assert shown.data["data"]["text/html"] == "h" * MB2
    else:
        [error] = [r for r in records if r.kind is RecordKind.ERROR]
        assert error.data["ename"] == "ValueError" and error.data["evalue"] == "e" * MB2


def finish(job, timeout: float = 60) -> None:
    try:
        job.result(timeout=timeout)
    except JobError:
        pass  # a job that raises: its state says so


# -- process jobs ---------------------------------------------------------------------------
@pytest.mark.parametrize("what", sorted(BIG_CODES))
def test_a_big_record_in_a_process_job_comes_whole(manager, what):
    job = manager.start(BIG_CODES[what][0], "process")
    finish(job)
    check_big(job, manager.receive(job), what)


def test_a_cell_of_over_a_mib_runs_as_a_process_job(manager):
    job = manager.start(BIG_CELL, "process")
    assert job.result(timeout=60) == 1_200_000
    assert manager.receive(job)[0].data == "1200000\n"


def _protocol_pipe_of(worker) -> str:
    """The /proc path of the worker's end of the pipe it sends its frames on."""
    ours = os.readlink(f"/proc/self/fd/{worker.proc.stdout.fileno()}")
    for fd in os.listdir(f"/proc/{worker.pid}/fd"):
        if os.readlink(f"/proc/{worker.pid}/fd/{fd}") == ours:
            return f"/proc/{worker.pid}/fd/{fd}"
    raise AssertionError("the worker has no end of its frame pipe")


@pytest.mark.parametrize("frame", [{"seq": 5, "kind": "bogus", "data": 1}, {"seq": 5}], ids=["unknown-kind", "no-kind"])
def test_a_frame_the_reader_cannot_apply_fails_the_process_job_saying_why(manager, frame):
    job = manager.start("import time\nprint('started', flush=True)\ntime.sleep(600)", "process")
    assert wait_until(lambda: job.stream.has_unreceived, timeout=30)
    worker = next(w for w in manager.backend("process").pool._all if w.job is job)
    with open(_protocol_pipe_of(worker), "wb", buffering=0) as pipe:
        write_frame(pipe, dict(frame, op="record", job=job.id))
    assert wait_until(lambda: job.state.finished, timeout=20), "the job stayed Running"
    assert job.state is JobState.Failed and f"worker {worker.pid}" in str(job.error), job.error
    assert wait_until(lambda: not worker.alive, timeout=10)
    assert manager.start("6 * 7", "process").result(timeout=60) == 42  # a new worker serves


@pytest.mark.kernel
def test_a_big_line_received_in_a_kernel_is_shown_capped_and_kept_whole(kernel):
    from kernel_helpers import stream_text

    kernel.run("%%rjob start --name big\nprint('y' * 2_000_000)")
    kernel.run("%rjob wait big --timeout 60")
    shown = stream_text(kernel.run("%rjob receive big --keep"))
    assert "all of it is in _rjob_cut[0]" in shown and len(shown) < 100_000, shown[-300:]
    assert kernel.value("[len(_rjob_cut[0]), sorted(set(_rjob_cut[0]))]") == [2_000_000, ["y"]]
    kernel.run("from jupyter_rjobs.ipython.extension import get_manager")
    assert kernel.value("len(''.join(r.data for r in get_manager().receive('big')))") == 2_000_001  # kept whole


# -- remote jobs ----------------------------------------------------------------------------
def spool_of(lab, job) -> Path:
    return Path(lab.home) / ".cache" / "jupyter_rjobs" / "jobs" / str(job.instance_id)


@pytest.fixture
def lab(ssh_lab_empty):
    return ssh_lab_empty


@pytest.fixture
def remote(make_manager, lab):
    return make_manager(ssh_config=lab.ssh_config)


@pytest.mark.ssh
@pytest.mark.parametrize("cache", ["kernel", "remote"])
@pytest.mark.parametrize("what", sorted(BIG_CODES))
def test_a_big_record_in_a_remote_job_comes_whole(remote, cache, what):
    job = remote.start(HOST_DISPLAY if what == "display" else BIG_CODES[what][0], host="server01", cache=cache)
    finish(job)
    check_big(job, remote.receive(job), what)
    assert remote.start("6 * 7", host="server01").result(timeout=60) == 42  # the connection serves on


@pytest.mark.ssh
@pytest.mark.parametrize("cache", ["kernel", "remote"])
def test_a_detached_job_with_big_records_is_adopted_by_another_manager(make_manager, lab, cache):
    first = make_manager(ssh_config=lab.ssh_config)
    code = f"print('y' * 2_000_000)\n{HOST_DISPLAY}\nraise ValueError('e' * 2_000_000)"
    job = first.start(code, host="nshost1", cache=cache, detached=True)
    finish(job)
    first.shutdown()
    second = make_manager(ssh_config=lab.ssh_config)
    [adopted] = second.connect("nshost1")
    assert wait_until(lambda: adopted.state.finished, timeout=60), adopted.state
    records = second.receive(adopted)
    check_big(adopted, records, "raise")  # Failed, its error whole
    assert "".join(r.data for r in records if r.kind is RecordKind.STDOUT) == "y" * MB2 + "\n"
    assert [r.data["data"]["text/html"] for r in records if r.kind is RecordKind.DISPLAY] == ["h" * MB2]
    assert second.start("6 * 7", host="nshost1").result(timeout=60) == 42  # the host is not poisoned


@pytest.mark.ssh
@pytest.mark.parametrize("cache", ["kernel", "remote"])
def test_a_cell_of_over_a_mib_runs_as_a_remote_job(remote, cache):
    job = remote.start(BIG_CELL, host="server01", cache=cache)
    value = job.result(timeout=60)
    records = remote.receive(job)
    assert job.state is JobState.Completed, job.error
    assert [r.data for r in records if r.kind is RecordKind.STDOUT] == ["1200000\n"]
    assert value == (1_200_000 if cache == "kernel" else None)


@pytest.mark.ssh
def test_a_frame_the_kernel_cannot_apply_fails_that_remote_job_only(remote, lab):
    job = remote.start("import time\nprint('started', flush=True)\ntime.sleep(600)", host="server01")
    assert wait_until(lambda: job.stream.has_unreceived, timeout=30)
    with open(spool_of(lab, job) / "records", "ab") as records:  # well formed, but no kind of record
        write_frame(records, {"op": "record", "job": str(job.instance_id), "seq": 99, "kind": "bogus", "data": 1})
    assert wait_until(lambda: job.state.finished, timeout=20), "the job stayed Running"
    assert job.state is JobState.Failed and "could not be applied" in str(job.error), job.error
    assert remote.start("6 * 7", host="server01").result(timeout=60) == 42  # the connection serves on


# -- corrupt and torn spools (defect 6) -----------------------------------------------------
GARBAGE = b"\xff\xff\xff\xf0\0\0\0\0"


def frame_starts(path: Path) -> list[int]:
    scanner = Scanner(str(path))
    try:
        starts = []
        while (found := scanner.next()) is not None:
            starts.append(found[1])
        return starts
    finally:
        scanner.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300), max_size=3), st.binary(max_size=60))
def test_the_scanner_stops_at_bytes_that_are_not_a_frame_and_says_where(tmp_path, payloads, tail):
    good = b"".join(_encode({"seq": i + 1, "kind": "stdout"}, [p]) for i, p in enumerate(payloads))
    path = tmp_path / f"records-{uuid.uuid4()}"
    path.write_bytes(good + GARBAGE + tail)
    scanner = Scanner(str(path))
    try:
        seen = 0
        with pytest.raises(ValueError):
            while scanner.next() is not None:
                seen += 1
        assert seen == len(payloads) and scanner.offset == len(good) and scanner.corrupt
        [error, state] = scanner.corrupt_records()
        assert f"corrupt at offset {len(good)}" in error[1]["evalue"] and state == ("state", "Failed")
    finally:
        scanner.close()


def _encode(header, buffers) -> bytes:
    out = io.BytesIO()
    write_frame(out, header, buffers)
    return out.getvalue()


@pytest.mark.ssh
@pytest.mark.parametrize("cache", ["kernel", "remote"])
def test_garbage_at_the_start_of_a_detached_spool_fails_the_job_and_the_server_lives_on(make_manager, lab, cache):
    first = make_manager(ssh_config=lab.ssh_config)
    job = first.start("import time\nprint('x', flush=True)\ntime.sleep(600)", host="server01", cache=cache, detached=True)
    assert wait_until(lambda: job.stream.has_unreceived, timeout=30)
    first.shutdown()
    records = spool_of(lab, job) / "records"
    with open(records, "r+b") as f:
        f.write(GARBAGE)
    second = make_manager(ssh_config=lab.ssh_config)
    [adopted] = second.connect("server01")
    assert wait_until(lambda: adopted.state.finished, timeout=20), "the job stayed Running"
    assert adopted.state is JobState.Failed
    assert "spool is corrupt at offset 0" in str(adopted.error), adopted.error
    assert second.start("6 * 7", host="server01").result(timeout=60) == 42  # the server lives on
    assert records.exists()  # the evidence stays
    pid = json.loads((spool_of(lab, job) / "pid").read_text())["pid"]
    assert wait_until(lambda: not pid_alive(pid), timeout=10)  # its output could not be read: it was stopped


@pytest.mark.ssh
@pytest.mark.parametrize("cache", ["kernel", "remote"])
def test_a_torn_or_corrupt_spool_delivers_what_came_before(make_manager, lab, cache):
    first = make_manager(ssh_config=lab.ssh_config)
    jobs = [first.start("print('before')\nprint('after' * 1000)\n'done'", host="nshost2", cache=cache, detached=True, name=f"j{i}")
            for i in range(2)]
    for job in jobs:
        job.result(timeout=60)
    first.shutdown()
    for job in jobs:  # torn only once nothing of the job can write there any more (its supervisor ends it)
        pid = json.loads((spool_of(lab, job) / "pid").read_text())["pid"]
        assert wait_until(lambda pid=pid: not pid_alive(pid), timeout=30)
    cut = {}
    for i, job in enumerate(jobs):
        path = spool_of(lab, job) / "records"
        starts = frame_starts(path)  # [running state?, before, after, value, Completed]
        after = next(s for s in starts if b"afterafter" in path.read_bytes()[s : s + 200])
        data = path.read_bytes()
        path.write_bytes(data[: after + 20] if i == 0 else data[:after] + GARBAGE + data[after:])  # torn; corrupt
        cut[job.instance_id] = after
    second = make_manager(ssh_config=lab.ssh_config)
    adopted = second.connect("nshost2")
    assert len(adopted) == 2
    for job in adopted:
        assert wait_until(lambda job=job: job.state.finished, timeout=20), "the job stayed Running"
        records = second.receive(job)
        assert [r.data for r in records if r.kind is RecordKind.STDOUT] == ["before\n"]
        assert job.state is JobState.Failed
        assert f"spool is corrupt at offset {cut[job.instance_id]}" in str(job.error), job.error
    assert second.start("6 * 7", host="nshost2").result(timeout=60) == 42


# -- a remote-cache spool is received a part at a time (defect 11) --------------------------
MEASURE = r"""
import resource, sys, time
from jupyter_rjobs import JobManager
lines = int(sys.argv[2])
with JobManager(ssh_config=sys.argv[1]) as m:
    job = m.start(f"for i in range({lines}):\n    print('line', i)", host="server01", cache="remote")
    job.result(timeout=600)
    before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    records = m.iter_receive(job) if sys.argv[3] == "iter" else m.receive(job)
    count = sum(r.data.count('\n') for r in records if r.kind == "stdout")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{time.monotonic() - started:.1f}s", count, before, after)
"""


@pytest.mark.ssh
def test_receiving_a_long_remote_cache_spool_streams_it(lab, tmp_path):
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    lines, mode = int(os.environ.get("RJOBS_MEASURE_LINES", "300000")), os.environ.get("RJOBS_MEASURE_MODE", "iter")
    out = subprocess.run([sys.executable, str(script), lab.ssh_config, str(lines), mode], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    count, before, after = map(int, out.stdout.split()[-3:])
    print(f"{lines} lines, {mode}: ru_maxrss {before / 1024:.0f} -> {after / 1024:.0f} MiB; {out.stdout.split()[-4]}")
    assert count == lines
    grown_mib = (after - before) / 1024
    assert grown_mib < 40, f"receive grew the kernel by {grown_mib:.0f} MiB"


@pytest.mark.ssh
def test_a_remote_cache_spool_is_fetched_in_parts_and_records_come_whole(remote):
    code = "for c in 'abc':\n    print(c * 3_000_000)"
    job = remote.start(code, host="server01", cache="remote")
    job.result(timeout=60)
    parts = list(job.runner.fetch_parts(0))  # about 4 MiB each: a record longer than that comes whole
    assert len(parts) >= 2, [len(p) for p in parts]
    out = [r.data for part in parts for r in part if r.kind is RecordKind.STDOUT]
    assert "".join(out) == "".join(c * 3_000_000 + "\n" for c in "abc")
    followed = remote.receive(job, wait=True, timeout=60)  # follow takes it a part at a time too
    assert "".join(r.data for r in followed if r.kind is RecordKind.STDOUT) == "".join(out)
    assert remote.receive(job) == []  # all of it counted as received
