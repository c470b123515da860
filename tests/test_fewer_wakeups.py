"""What keeps a remote job's wake-ups few (issue 11, fan-out) must not cost what a user sees.

- A job's Running state is written without waking the host's server; its next record, or its
  end, says it. A job that prints nothing for long must still show Running soon (the server
  looks at every job it forwards several times a second).
- A job's value, its end and its READY wake the server once.
- A finished job's CLEAN waits a moment for another frame to go with, but goes by itself when
  none comes: its spool is deleted without the user removing the job.
- The supervisor learns each job's spool from a page shared with the server (no wake-up per
  job); a job process killed in the middle of a job still gets that job's end written.

Through the local agent (``localhost``: the same agent, server and spools as an SSH host, no
sshd), real processes throughout.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import wait_until  # noqa: E402

from jupyter_rjobs.agent.spool import READY, RECORDS, SpoolWriter  # noqa: E402
from jupyter_rjobs.core.job import JobState  # noqa: E402


def _spools(home: str) -> list[str]:
    jobs = Path(home) / ".cache" / "jupyter_rjobs" / "jobs"
    return sorted(p.name for p in jobs.iterdir() if not p.name.startswith(".")) if jobs.is_dir() else []


def test_a_hushed_write_owes_its_notify_byte_and_settle_says_it_with_ready(tmp_path):
    notify_r, notify_w = os.pipe()
    os.set_blocking(notify_r, False)

    def said() -> bytes:
        try:
            return os.read(notify_r, 100)
        except BlockingIOError:
            return b""

    out = SpoolWriter(str(tmp_path / "records"), notify_w)
    out.hush(True)
    out.write(b"running")
    assert said() == b"" and out.owed
    out.hush(False)
    out.write(b"output")  # says the owed record too
    assert said() == RECORDS and not out.owed
    out.hush(True)
    out.write(b"value")
    out.write(b"end")
    assert said() == b"" and out.owed
    out.settle(READY)
    assert said() == RECORDS + READY and not out.owed
    out.close()
    assert (tmp_path / "records").read_bytes() == b"runningoutputvalueend"
    os.close(notify_r)
    os.close(notify_w)


def test_a_silent_job_shows_running_soon_and_its_output_and_value_arrive(local_home, make_manager):
    manager = make_manager()
    manager.start("1", host="localhost").result(timeout=60)  # the agent is up: what follows is the job's own
    job = manager.start("import time\ntime.sleep(600)", host="localhost")
    assert wait_until(lambda: job.state is JobState.Running, 20), f"a job that prints nothing stayed {job.state}"
    manager.stop(job)
    assert wait_until(lambda: job.state.finished, 30)
    talker = manager.start("print('a')\nimport time\ntime.sleep(0.2)\nprint('b')\n6 * 7", host="localhost")
    assert talker.result(timeout=60) == 42
    assert [r.data for r in manager.receive(talker, keep=True) if r.kind.value == "stdout"] == ["a\n", "b\n"]


def test_a_finished_jobs_spool_goes_without_the_user_removing_it(local_home, make_manager):
    manager = make_manager()
    jobs = [manager.start(f"{n} * 2", host="localhost") for n in range(5)]
    assert [job.result(timeout=60) for job in jobs] == [0, 2, 4, 6, 8]
    assert wait_until(lambda: not _spools(local_home), 20), f"spools of received jobs are still there: {_spools(local_home)}"
    assert [job.state for job in jobs] == [JobState.Completed] * 5  # still listed here, with their values
    assert [job.result() for job in jobs] == [0, 2, 4, 6, 8]


def test_a_job_process_killed_mid_job_gets_that_jobs_end_written(local_home, make_manager):
    manager = make_manager()
    for n in range(3):  # the pair has run other jobs: the end must go to this job's spool, not theirs
        assert manager.start(f"{n}", host="localhost").result(timeout=60) == n
    job = manager.start("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(600)", host="localhost")
    assert wait_until(lambda: any(r.kind.value == "stdout" for r in manager.receive(job, keep=True)), 30)
    pid = int(next(r.data for r in manager.receive(job, keep=True) if r.kind.value == "stdout"))
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: job.state.finished, 30)
    assert job.state is JobState.Failed
    assert "SIGKILL" in (job.reason or "") + str(job.exception())
