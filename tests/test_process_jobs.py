"""What only process jobs do: process trees, worker deaths, the warm pool, fd-level output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers import leaves_a_printing_child, pid_alive, process_tree_of, wait_until

from jupyter_rjobs import JobError, JobState, RecordKind

SPAWN_TREE = (
    "import os, subprocess, sys, time\n"
    "child = subprocess.Popen(['sleep', '600'])\n"
    "escaped = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
    "print(os.getpid(), child.pid, escaped.pid, flush=True)\n"
    "while True:\n"
    "    time.sleep(0.05)\n"
)


def _pids_from_first_line(manager, job) -> list[int]:
    for record in manager.follow(job, keep=True):
        if record.kind is RecordKind.STDOUT:
            return [int(p) for p in record.data.split()]
    raise AssertionError("the job printed nothing")


def test_stop_ends_the_whole_process_tree(manager):
    job = manager.start(SPAWN_TREE, "process")
    pids = _pids_from_first_line(manager, job)
    assert all(pid_alive(p) for p in pids)
    manager.stop(job)
    assert job.state is JobState.Stopped
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10), [p for p in pids if pid_alive(p)]


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(make_manager):
    manager = make_manager(stop_grace=0.5)
    job = manager.start(
        "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint(os.getpid(), flush=True)\n"
        "while True:\n    time.sleep(0.05)",
        "process",
    )
    (pid,) = _pids_from_first_line(manager, job)
    manager.stop(job)
    assert job.state is JobState.Stopped
    assert wait_until(lambda: not pid_alive(pid), timeout=5)


def test_a_killed_worker_fails_the_job_naming_the_signal(manager):
    job = manager.start("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(600)", "process")
    (pid,) = _pids_from_first_line(manager, job)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(JobError, match="worker exited with signal 9"):
        job.result(timeout=10)
    assert job.state is JobState.Failed
    assert "SIGKILL" in str(job.error)
    # the crashed worker is replaced: the next job runs
    assert manager.start("2 + 2", "process").result(timeout=30) == 4


def test_a_worker_that_exits_fails_the_job_with_its_exit_code(manager):
    job = manager.start("import os\nos._exit(3)", "process")
    with pytest.raises(JobError, match="exit code 3"):
        job.result(timeout=30)


def test_workers_are_reused_and_kept_warm(manager):
    first = manager.start("import os\nos.getpid()", "process").result(timeout=30)
    second = manager.start("import os\nos.getpid()", "process").result(timeout=30)
    pool = manager.backend("process").pool
    assert wait_until(lambda: len(pool.pids) >= 1)
    assert {first, second} <= set(pool.pids) | {first, second}
    assert first == second or pid_alive(first)  # reused, or still in the pool


def test_fd_level_output_of_subprocesses_is_captured_in_order(manager):
    job = manager.start(
        "import subprocess, sys\nprint('python before', flush=True)\n"
        "subprocess.run(['echo', 'from echo'])\n"
        "subprocess.run(['sh', '-c', 'echo to fd2 >&2'])\n"
        "print('python after')",
        "process",
    )
    job.result(timeout=30)
    records = manager.receive(job)
    stdout = "".join(r.data for r in records if r.kind is RecordKind.STDOUT)
    stderr = "".join(r.data for r in records if r.kind is RecordKind.STDERR)
    assert stdout == "python before\nfrom echo\npython after\n"
    assert stderr == "to fd2\n"


def test_the_job_runs_in_the_kernels_current_directory(manager, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = manager.start("import os\nos.getcwd()", "process")
    assert job.result(timeout=30) == str(tmp_path)


def test_shutdown_leaves_no_process_behind(make_manager):
    manager = make_manager(warm_workers=2)
    job = manager.start(SPAWN_TREE, "process")
    pids = _pids_from_first_line(manager, job)
    pool_pids = manager.backend("process").pool.pids
    assert wait_until(lambda: len(manager.backend("process").pool.pids) >= 2)
    everything = set(pids) | set(pool_pids) | set(manager.backend("process").pool.pids)
    manager.shutdown()
    assert job.state is JobState.Stopped
    assert wait_until(lambda: not any(pid_alive(p) for p in everything), timeout=10)


def test_a_process_that_dies_with_its_parent_takes_its_workers_along(tmp_path):
    """A kernel killed with SIGKILL runs no clean-up: its workers must notice and go."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, time\n"
        "from jupyter_rjobs import JobManager\n"
        "m = JobManager(warm_workers=1)\n"
        "job = m.start(" + repr(SPAWN_TREE) + ", 'process')\n"
        "for r in m.follow(job):\n"
        "    print(r.data, end='', flush=True)\n"
        "    break\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 3 and all(pid_alive(p) for p in pids)
        tree = process_tree_of(owner.pid)
        owner.kill()
        owner.wait()
        assert wait_until(lambda: not any(pid_alive(p) for p in set(pids) | set(tree[1:])), timeout=10)
    finally:
        owner.kill()
        owner.wait()


def test_a_child_a_job_leaves_behind_ends_with_it_and_its_output_stays_in_that_job(manager):
    job = manager.start(leaves_a_printing_child(), "process")
    child = job.result(timeout=30)
    others = [manager.start("import time\ntime.sleep(1.5)", "process") for _ in range(4)]
    for other in others:
        other.result(timeout=60)
    for other in others:
        leaked = [r.data for r in manager.receive(other) if r.kind in (RecordKind.STDOUT, RecordKind.STDERR)]
        assert leaked == [], f"job {other.id} got another job's output: {leaked}"
    records = manager.receive(job)
    stdout = "".join(r.data for r in records if r.kind is RecordKind.STDOUT)
    stderr = "".join(r.data for r in records if r.kind is RecordKind.STDERR)
    assert stdout.startswith("leak1\n") and "leak8" not in stdout, stdout
    assert "ended the processes this job left running" in stderr and f"pid {child} (sh)" in stderr, stderr
    assert wait_until(lambda: not pid_alive(child), timeout=10)


def test_a_thread_a_job_leaves_behind_ends_with_its_worker_never_printing_into_the_next_job(manager):
    job = manager.start(
        "import os, threading, time\n"
        "def chatter():\n"
        "    for i in range(20):\n"
        "        print('tleak', i, flush=True); time.sleep(0.1)\n"
        "threading.Thread(target=chatter, name='chatter').start()\n"
        "time.sleep(0.05)\n"
        "os.getpid()",
        "process",
    )
    worker = job.result(timeout=30)
    others = [manager.start("import time\ntime.sleep(1)", "process") for _ in range(3)]
    for other in others:
        other.result(timeout=60)
        leaked = [r.data for r in manager.receive(other) if r.kind in (RecordKind.STDOUT, RecordKind.STDERR)]
        assert leaked == [], f"job {other.id} got another job's output: {leaked}"
    stderr = "".join(r.data for r in manager.receive(job) if r.kind is RecordKind.STDERR)
    assert "(chatter); they end with its process" in stderr, stderr
    assert wait_until(lambda: not pid_alive(worker), timeout=10)
    assert manager.start("2 + 2", "process").result(timeout=30) == 4


def test_what_a_job_leaves_running_dies_with_a_worker_that_exits(manager):
    job = manager.start(
        "import os, subprocess\nchild = subprocess.Popen(['sleep', '600'])\nprint(child.pid, flush=True)\nos._exit(3)",
        "process",
    )
    (child,) = _pids_from_first_line(manager, job)
    with pytest.raises(JobError, match="exit code 3"):
        job.result(timeout=30)
    assert wait_until(lambda: not pid_alive(child), timeout=10)
