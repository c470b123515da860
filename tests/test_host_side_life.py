"""What the host side does when its agent server or its kernel dies (real sshd lab, real
processes): a killed agent server is noticed and replaced, nothing lost or duplicated; the
server of a kernel that is gone lets go of its jobs at once and ends its non-detached work
after the grace period."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import pid_alive, wait_until
from kernel_helpers import descendants

from jupyter_rjobs import JobState, RecordKind

pytestmark = pytest.mark.ssh

STREAM = "import time\nfor i in range({n}):\n    print(i, flush=True)\n    time.sleep(0.1)\n'done'"


def numbers(records) -> list[int]:
    return [int(line) for r in records if r.kind is RecordKind.STDOUT for line in r.data.split()]


def spool_of(lab, instance) -> Path:
    return Path(lab.home) / ".cache" / "jupyter_rjobs" / "jobs" / str(instance)


def server_pids(lab) -> list[int]:
    return [pid for pid, cmd in lab.user_processes() if "serve_main" in cmd]


def test_a_killed_agent_server_is_noticed_and_replaced_losing_nothing(make_manager, ssh_lab_empty):
    lab = ssh_lab_empty
    manager = make_manager(ssh_config=lab.ssh_config)
    job = manager.start(STREAM.format(n=300), host="nshost1", name="streamed")  # 30 s
    assert wait_until(lambda: job.state is JobState.Running, timeout=30)
    time.sleep(1.5)
    first = numbers(manager.receive(job))
    assert first, "the job printed nothing"
    connection = job.runner.connection
    old_server = connection.server_pid
    os.kill(old_server, signal.SIGKILL)
    killed = time.monotonic()
    assert wait_until(lambda: job.runner.connection is not connection and job.state is JobState.Running, timeout=15), (
        f"the killed agent server was not noticed: {job.state} {job.reason!r}")
    print(f"a killed agent server: re-attached through a new one {time.monotonic() - killed:.1f} s later")
    assert job.runner.connection.server_pid not in (0, old_server)
    assert job.result(timeout=90) == "done"
    assert first + numbers(manager.receive(job)) == list(range(300))


def test_stop_and_remove_force_while_the_host_is_out_of_reach_say_so_and_keep_the_spool(ip, ssh_lab_empty):
    from IPython.utils.capture import capture_output

    from jupyter_rjobs.backends.remote import registry
    from jupyter_rjobs.ipython.extension import get_manager

    lab = ssh_lab_empty
    manager = get_manager(ip)
    backend = manager.backend("remote")
    saved = manager.ssh_config, backend.reconnect_for
    manager.ssh_config, backend.reconnect_for = lab.ssh_config, None
    try:
        job = ip.run_cell_magic("rjob", "start --host nshost2 --name held", "import time\ntime.sleep(600)")
        assert wait_until(lambda: job.state is JobState.Running, timeout=30)
        lab.stop_sshd("nshost2")  # no reconnecting while it is down
        os.kill(job.runner.connection.server_pid, signal.SIGKILL)
        assert wait_until(lambda: job.state is JobState.Disconnected, timeout=15)
        table = ip.run_line_magic("rjob", "stop held")
        assert job.state is JobState.Stopping
        assert "C code" not in table.note and "the stop is sent again when it is back" in table.note, table.note
        with capture_output() as out:
            ip.run_line_magic("rjob", "remove held --force")
        assert "its spool stays on nshost2" in out.stdout, out.stdout
        assert spool_of(lab, job.instance_id).is_dir()
        assert [j.instance for j in registry.left_jobs()] == [str(job.instance_id)], "the registry entry must stay"
        lab.start_sshd("nshost2")  # back: the stop, then the clean, reach the host
        assert wait_until(lambda: not spool_of(lab, job.instance_id).exists(), timeout=60)
        assert wait_until(lambda: registry.left_jobs() == [], timeout=10)
    finally:
        manager.ssh_config, backend.reconnect_for = saved


def start_dying_kernel(lab, reconnect_for: float, other_work: bool = True):
    """A real kernel with a detached job on nshost3 (and a non-detached one and a session)."""
    from kernel_helpers import KernelSession

    kernel = KernelSession()
    kernel.run("%load_ext jupyter_rjobs")
    kernel.run("from jupyter_rjobs.ipython.extension import get_manager\n"
               f"get_manager().backend('remote').reconnect_for = {reconnect_for!r}")
    kernel.run("%%rjob start --host nshost3 --detached --name det\n" + STREAM.format(n=40))
    names = "('det',)"
    if other_work:
        kernel.run("%%rjob start --host nshost3 --name kept\nimport time\ntime.sleep(600)")
        kernel.run("%rjob session new nshost3 --name s1")
        names = "('det', 'kept')"
    kernel.run("import time\ntime.sleep(1.5)")
    ids = kernel.value(f"' '.join(str(get_manager().get(n).instance_id) for n in {names})")
    server = kernel.value("[c.server_pid for c in get_manager().backend('remote')._connections.values()][0]")
    return kernel, ids.split(), server


def kill_kernel(kernel) -> None:
    os.kill(kernel.kernel_pid, signal.SIGKILL)
    assert kernel.process.wait(5) == -signal.SIGKILL
    kernel.close()


@pytest.mark.kernel
@pytest.mark.parametrize("run", range(3))
def test_after_a_kernel_is_killed_its_server_and_spare_end_within_seconds_and_connect_adopts(ssh_lab_empty, monkeypatch, run):
    lab = ssh_lab_empty
    monkeypatch.setenv("JUPYTER_RJOBS_SSH_CONFIG", lab.ssh_config)
    kernel, (det,), server = start_dying_kernel(lab, 300.0, other_work=False)
    supervisor = json.loads((spool_of(lab, det) / "pid").read_text())["pid"]
    the_job = {supervisor, *descendants(supervisor)}
    host_side = {server, *descendants(server)} - the_job  # the server and its spare pair
    assert server in host_side and len(host_side) >= 2, host_side
    kill_kernel(kernel)
    killed = time.monotonic()
    gone = wait_until(lambda: not [p for p in host_side if pid_alive(p)], timeout=10)
    print(f"run {run}: {len(host_side)} host-side processes of the killed kernel, ended after {time.monotonic() - killed:.1f} s")
    assert gone, f"the killed kernel's agent server or spare still runs: {[p for p in host_side if pid_alive(p)]}"
    assert [p for p in the_job if pid_alive(p)], "the detached job must go on"
    from kernel_helpers import KernelSession

    second = KernelSession()
    try:
        second.run("%load_ext jupyter_rjobs")
        second.run("%rjob connect nshost3")
        second.run("from jupyter_rjobs.ipython.extension import get_manager")
        assert second.value("[str(j.instance_id) for j in get_manager().list()]") == [det], "connect did not adopt the job"
        assert second.value("get_manager().get('det').result(timeout=30)") == "done"
    finally:
        second.shutdown()
        second.close()


@pytest.mark.kernel
def test_a_killed_kernels_non_detached_work_ends_after_the_grace_and_detached_work_goes_on(ssh_lab_empty, monkeypatch, make_manager):
    lab = ssh_lab_empty
    monkeypatch.setenv("JUPYTER_RJOBS_SSH_CONFIG", lab.ssh_config)
    kernel, (det, kept), _ = start_dying_kernel(lab, 5.0)  # the host waits 5 + 30 s for it
    sessions = Path(lab.home) / ".cache" / "jupyter_rjobs" / "sessions"
    assert len(list(sessions.iterdir())) == 1
    kill_kernel(kernel)
    killed = time.monotonic()
    time.sleep(10)
    assert len(list(sessions.iterdir())) == 1, "the session must wait out the grace period (a partition)"
    assert wait_until(lambda: not any(sessions.iterdir()), timeout=90), "the killed kernel's session was never closed"
    ended = time.monotonic() - killed
    print(f"the killed kernel's session ended {ended:.1f} s after the kill")
    manager = make_manager(ssh_config=lab.ssh_config)
    jobs = {str(j.instance_id): j for j in manager.connect("nshost3")}
    assert wait_until(lambda: jobs[kept].state is JobState.Stopped, timeout=30), (jobs[kept].state, jobs[kept].reason)
    assert jobs[det].result(timeout=30) == "done"
