"""Remote jobs run in warm pairs (agent/supervisor.py): a host's job process runs one job after
another while its server hands it more. Through the local agent (``localhost``: the same agent,
server and spools as an SSH host, no sshd), real processes throughout.

What reuse must never change: each job gets a fresh ``__main__``; a job that leaves threads
running, or holds much memory, is not followed by another in its process; a detached job's pair
is its own (no job follows it there) and ends with it; every pair ends once its server is gone."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import pid_alive, wait_until  # noqa: E402

PID = "import os\nos.getpid()"


def test_jobs_one_after_another_run_in_warm_processes_each_with_a_fresh_main(local_home, make_manager):
    manager = make_manager()
    seen = []
    for _ in range(6):
        job = manager.start("import os\nleft = 'left_behind' in globals()\nleft_behind = 'x'\n(os.getpid(), left)", host="localhost")
        seen.append(job.result(timeout=60))
    assert not any(left for _, left in seen)  # a fresh namespace every time
    pids = {pid for pid, _ in seen}
    assert len(pids) <= 2, f"6 jobs one after another ran in {len(pids)} processes: no pair was used again"
    assert all(pid_alive(pid) for pid in pids)  # they wait for the next job


def test_a_job_that_leaves_a_thread_running_is_the_last_in_its_process(local_home, make_manager):
    manager = make_manager()
    leaver = manager.start(
        "import os, threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()\nos.getpid()",
        host="localhost",
    )
    pid = leaver.result(timeout=60)
    assert wait_until(lambda: not pid_alive(pid), 30), "the process of a job that left a thread must end"
    assert manager.start(PID, host="localhost").result(timeout=60) != pid


def test_a_job_that_holds_much_memory_is_the_last_in_its_process(local_home, make_manager):
    manager = make_manager()
    pid = manager.start("import os\nkept = bytearray(600 * 2**20)\nkept[::4096] = b'x' * len(kept[::4096])\nos.getpid()",
                        host="localhost").result(timeout=120)
    assert wait_until(lambda: not pid_alive(pid), 30), "a job process holding over 512 MiB must not take another job"
    assert manager.start(PID, host="localhost").result(timeout=60) != pid


def test_a_detached_job_takes_its_pair_for_itself_and_it_ends_with_the_job(local_home, make_manager):
    manager = make_manager()
    manager.start(PID, host="localhost").result(timeout=60)
    pid = manager.start(PID, host="localhost", detached=True).result(timeout=60)
    assert wait_until(lambda: not pid_alive(pid), 30), "a detached job's process must end with its job"
    assert manager.start(PID, host="localhost").result(timeout=60) != pid


def test_many_jobs_at_once_share_a_few_warm_processes(local_home, make_manager):
    manager = make_manager()
    jobs = [manager.start(PID, host="localhost") for _ in range(200)]
    pids = {job.result(timeout=120) for job in jobs}
    assert len(pids) < 50, f"{len(pids)} processes for 200 quick jobs: pairs were not used again"


def test_once_the_server_is_gone_every_pair_ends_after_its_job(local_home, make_manager, tmp_path):
    manager = make_manager()
    idle = manager.start(PID, host="localhost").result(timeout=60)
    started = str(tmp_path / "started")
    busy = manager.start(f"import os, time\nopen({started!r}, 'w').close()\ntime.sleep(1)\nos.getpid()", host="localhost", detached=True)
    assert wait_until(lambda: os.path.exists(started), 30)
    manager.shutdown()  # the local agent's server ends with its pipe
    assert wait_until(lambda: not pid_alive(idle), 30), "a free pair must end with its server"
    root = os.path.join(local_home, ".cache", "jupyter_rjobs", "jobs", str(busy.instance_id))
    assert wait_until(lambda: b'"Completed"' in open(os.path.join(root, "records"), "rb").read(), 30)


def test_a_job_stopped_while_it_waits_for_a_pair_ends_stopped_and_never_runs(local_home, make_manager, monkeypatch, tmp_path):
    """A job that found no free pair waits (here: as long as it takes) and can be stopped there."""
    monkeypatch.setenv("JUPYTER_RJOBS_HAND_WAIT", "600")  # the local agent's server inherits it
    manager = make_manager()
    gate, ran = str(tmp_path / "gate"), str(tmp_path / "ran")
    blocking = f"import os, time\nwhile not os.path.exists({gate!r}):\n    time.sleep(0.02)"
    first = manager.start(blocking, host="localhost")
    assert wait_until(lambda: first.state.name == "Running", 30)
    # at most one pair is free now (forked at a quiet moment): the next job takes it, the one after waits
    second = manager.start(blocking, host="localhost")
    waiting = manager.start(f"open({ran!r}, 'w').close()", host="localhost")
    manager.stop(waiting)
    assert wait_until(lambda: waiting.state.name == "Stopped", 30), waiting.state
    open(gate, "w").close()
    assert first.result(timeout=60) is None and second.result(timeout=60) is None
    assert not os.path.exists(ran), "a job stopped while it waited for a pair must never run"


def test_a_pair_stopped_while_it_starts_ends_its_job_process_too():
    """A stop that reaches a pair's supervisor before its job process has a process group of
    its own (a job stopped the moment a new pair was forked for it) must still end that process:
    before, the signal went to a group that did not exist yet, and the job process ran on,
    orphaned, after its supervisor was gone (CI once found one, hours later)."""
    import signal

    from jupyter_rjobs.agent.proctree import descendants
    from jupyter_rjobs.agent.supervisor import Spare

    left = []
    for attempt in range(30):
        pair = Spare()
        if attempt % 2:  # the moment its job process is there
            wait_until(lambda pair=pair: bool(descendants(pair.pid)), 10, 0.0001)
        else:  # at once, or a little later
            time.sleep(attempt * 0.0002)
        os.kill(pair.pid, signal.SIGTERM)  # the job process may have no group of its own yet, or not be there
        seen: set[int] = set()

        def ended(pair: Spare = pair, seen: set[int] = seen) -> bool:
            seen.update(descendants(pair.pid))
            return os.waitpid(pair.pid, os.WNOHANG)[0] == pair.pid

        if not wait_until(ended, 20):
            left.append(pair.pid)
        left.extend(pid for pid in seen if pid_alive(pid))
        pair.discard()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes of stopped pairs still running: {left}"


def test_the_spools_of_removed_jobs_serve_new_ones_with_nothing_of_theirs_left(local_home, make_manager):
    """A removed job's spool is made ready for another job at a quiet moment (its records
    emptied, its cursor gone, its pid file saying no process), instead of deleted and made
    again: far cheaper on a journaled disk. A new job in one sees only its own records; the
    ready ones go when the server does."""
    manager = make_manager()
    jobs_dir = os.path.join(local_home, ".cache", "jupyter_rjobs", "jobs")

    def ready() -> list[str]:
        return [name for name in os.listdir(jobs_dir) if name.startswith(".removed-free-")]

    old = [manager.start(f"print('old {i}')\n'old'", host="localhost") for i in range(20)]
    manager.wait(old, timeout=60)
    assert all(job.result() == "old" for job in old)
    manager.receive(old[:5])  # acknowledged: their spools have a cursor file
    manager.remove(old)
    assert wait_until(lambda: len(ready()) == 20, 30), os.listdir(jobs_dir)
    new = [manager.start(f"print('new {i}')\n'new'", host="localhost") for i in range(20)]
    manager.wait(new, timeout=60)
    assert len(ready()) < 20, "no ready spool was used"
    for i, job in enumerate(new):
        assert job.result() == "new"
        assert [(str(r.kind), r.data) for r in manager.receive(job) if str(r.kind) in ("stdout", "stderr", "error")] == [("stdout", f"new {i}\n")]
    manager.remove(new)
    assert wait_until(lambda: all(name.startswith(".removed-free-") for name in os.listdir(jobs_dir)), 30), os.listdir(jobs_dir)
    manager.shutdown()
    assert wait_until(lambda: not os.listdir(jobs_dir), 30), os.listdir(jobs_dir)


def test_a_job_removed_long_after_it_ended_still_leaves_its_spool_ready_for_another(local_home, make_manager):
    """The server stops following a job a moment after its end is written (its sweep, every
    0.2 s); when the kernel cleans it later (a burst's jobs, removed after all of them end), its
    spool is still known to be written to its end, so it is made ready, not deleted and made
    again for the next job."""
    manager = make_manager()
    jobs_dir = os.path.join(local_home, ".cache", "jupyter_rjobs", "jobs")
    kept = [manager.start(f"{i}", host="localhost", cache="remote") for i in range(10)]  # cleaned only when removed
    manager.wait(kept, timeout=60)
    time.sleep(1.0)  # several sweeps: the server follows none of them any more
    manager.remove(kept)
    assert wait_until(lambda: len([n for n in os.listdir(jobs_dir) if n.startswith(".removed-free-")]) == 10, 30), os.listdir(jobs_dir)
    assert not [n for n in os.listdir(jobs_dir) if not n.startswith(".removed-free-")], os.listdir(jobs_dir)


def test_a_new_server_deletes_the_removed_spools_of_a_killed_one_and_leaves_a_live_ones(local_home, make_manager):
    """Removed spools carry their server's pid: the next server deletes those of a server that
    is gone, never those of one that runs (they are its own to delete or use)."""
    import subprocess

    jobs_dir = os.path.join(local_home, ".cache", "jupyter_rjobs", "jobs")
    for path in (os.path.dirname(os.path.dirname(jobs_dir)), os.path.dirname(jobs_dir), jobs_dir):
        os.makedirs(path, mode=0o700, exist_ok=True)  # private, as the agent checks
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    left = {f".removed-free-{gone.pid}-1", f".removed-{gone.pid}-{'0' * 8}-0000-0000-0000-{'0' * 12}"}
    live = f".removed-free-{os.getpid()}-1"  # this test's process runs
    for name in [*left, live]:
        os.mkdir(os.path.join(jobs_dir, name), 0o700)
        open(os.path.join(jobs_dir, name, "records"), "wb").close()
    manager = make_manager()
    assert manager.start("1", host="localhost").result(timeout=60) == 1
    assert wait_until(lambda: not left & set(os.listdir(jobs_dir)), 30), os.listdir(jobs_dir)
    assert live in os.listdir(jobs_dir)
