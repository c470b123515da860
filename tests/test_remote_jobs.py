"""Remote jobs against the real sshd lab: fan-out, caches, host keys, bad input, clean-up on the host.

The job contract itself (values, order, keep, wait, stop, errors) runs against remote jobs
in test_contract.py; this file covers what only remote jobs do.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import leaves_a_printing_child, wait_until
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from jupyter_rjobs import AuthenticationError, HostError, HostKeyError, JobError, JobState, RecordKind
from jupyter_rjobs.ipython.extension import get_manager

pytestmark = pytest.mark.ssh

LOOP_FOREVER = "import time\nwhile True:\n    time.sleep(0.05)"


@pytest.fixture
def remote(make_manager, ssh_lab):
    return make_manager(ssh_config=ssh_lab.ssh_config)


def spool_root(lab) -> Path:
    return Path(lab.home) / ".cache" / "jupyter_rjobs"


def spool_of(lab, job) -> Path:
    return spool_root(lab) / "jobs" / str(job.instance_id)


def job_processes(lab) -> list[tuple[int, str]]:
    """The test user's processes on the hosts, other than the agent servers themselves."""
    return [(pid, cmd) for pid, cmd in lab.user_processes() if "serve_main" not in cmd]


def variant_config(lab, tmp_path: Path, known_hosts: str | None = None, identity: str | None = None) -> str:
    """The lab's ssh_config with another known_hosts file or another key."""
    text = Path(lab.ssh_config).read_text()
    if known_hosts is not None:
        text = text.replace(lab.known_hosts, known_hosts)
    if identity is not None:
        text = text.replace(lab.client_key, identity)
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return str(path)


# -- fan-out ------------------------------------------------------------------------------
def test_fan_out_makes_a_parent_with_a_child_per_host(remote, ssh_lab):
    hosts = ["nshost1", "nshost2", "nshost3", "behind1"]
    code = "import os\nprint('on', os.environ['SSH_CONNECTION'].split()[2])\nos.environ['SSH_CONNECTION'].split()[2]"
    parent = remote.start(code, host=hosts, name="survey")
    values = parent.result(timeout=60)
    assert parent.state is JobState.Completed
    assert [c.location for c in parent.children] == hosts
    assert [c.name for c in parent.children] == [f"survey:{h}" for h in hosts]
    assert values == {h: ssh_lab.address(h)[0] for h in hosts}
    assert parent.location == ",".join(hosts)
    records = remote.receive(parent)
    assert {r.job_id for r in records} == {c.id for c in parent.children}
    assert remote.list() == [parent]
    assert remote.list(include_children=True) == [parent, *parent.children]


def test_a_failed_host_never_hides_the_others(remote, ssh_lab):
    failing_ip = ssh_lab.address("nshost2")[0]
    code = (
        "import os\nip = os.environ['SSH_CONNECTION'].split()[2]\n"
        f"if ip == {failing_ip!r}:\n    raise RuntimeError('bad host ' + ip)\nip"
    )
    parent = remote.start(code, host="nshost1,nshost2,nshost3")
    with pytest.raises(JobError, match="nshost2"):
        parent.result(timeout=60)
    assert parent.state is JobState.Failed
    assert [c.state for c in parent.children] == [JobState.Completed, JobState.Failed, JobState.Completed]
    values = {r.job_id: r.data for r in remote.receive(parent) if r.kind is RecordKind.VALUE}
    assert sorted(values.values()) == sorted([ssh_lab.address("nshost1")[0], ssh_lab.address("nshost3")[0]])
    assert parent.children[1].error.ename == "RuntimeError"


def test_an_unreachable_host_fails_its_child_only(remote):
    parent = remote.start("1 + 1", host="nshost1,127.0.0.1:1")
    with pytest.raises(JobError, match="refused the connection"):
        parent.result(timeout=60)
    good, bad = parent.children
    assert good.state is JobState.Completed and good.result() == 2
    assert bad.state is JobState.Failed and "127.0.0.1:1" in str(bad.error)


def test_stopping_a_parent_stops_every_child(remote):
    parent = remote.start(LOOP_FOREVER, host="nshost1,nshost2")
    assert wait_until(lambda: parent.state is JobState.Running, timeout=30)
    remote.stop(parent)
    assert parent.state is JobState.Stopped
    assert [c.state for c in parent.children] == [JobState.Stopped, JobState.Stopped]


# -- where the output is kept -------------------------------------------------------------
def test_kernel_cache_deletes_the_spool_once_everything_is_here(remote, ssh_lab):
    job = remote.start("print('x')\n1", host="server01")
    assert job.result(timeout=30) == 1
    assert wait_until(lambda: not spool_of(ssh_lab, job).exists(), timeout=10)
    assert [r.kind for r in remote.receive(job)] == [RecordKind.STDOUT, RecordKind.VALUE]


def test_remote_cache_keeps_records_on_the_host_until_received(remote, ssh_lab):
    job = remote.start("print('big')\n'value'", host="server01", cache="remote")
    job.result(timeout=30)
    spool = spool_of(ssh_lab, job)
    assert (spool / "records").exists()
    assert oct(spool.stat().st_mode & 0o777) == "0o700"
    assert oct((spool / "records").stat().st_mode & 0o777) == "0o600"
    assert job.has_more_data
    kept = remote.receive(job, keep=True)
    assert [(r.kind, r.data) for r in kept] == [(RecordKind.STDOUT, "big\n"), (RecordKind.VALUE, "value")]
    assert job.has_more_data and spool.exists()
    assert [r.seq for r in remote.receive(job)] == [r.seq for r in kept]
    assert remote.receive(job) == [] and not job.has_more_data
    assert spool.exists()  # received, but kept on the host until the job is removed
    remote.remove(job)
    assert wait_until(lambda: not spool.exists(), timeout=10)


def test_remote_cache_receive_wait_streams_from_the_host(remote):
    job = remote.start("import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.05)", host="server01", cache="remote")
    records = remote.receive(job, wait=True)
    assert "".join(r.data for r in records if r.kind is RecordKind.STDOUT) == "0\n1\n2\n3\n4\n"


# -- host keys ----------------------------------------------------------------------------
def test_an_unknown_host_is_refused_with_how_to_accept_it(make_manager, ssh_lab, tmp_path):
    known = tmp_path / "known_hosts"
    ssh_lab.write_known_hosts(str(known), hosts=["nshost1"])
    manager = make_manager(ssh_config=variant_config(ssh_lab, tmp_path, known_hosts=str(known)))
    with pytest.raises(HostKeyError, match="unknown host key.*--accept-new-host") as caught:
        manager.start("1", host="server01")
    assert caught.value.changed is False
    assert manager.list() == []
    job = manager.start("1", host="server01", accept_new_host=True)
    assert job.result(timeout=30) == 1
    assert "[127.0.0.1]:" in known.read_text()  # remembered
    again = make_manager(ssh_config=variant_config(ssh_lab, tmp_path, known_hosts=str(known)))
    assert again.start("2", host="server01").result(timeout=30) == 2  # now known, no opt-in needed


def test_a_changed_host_key_is_always_refused(make_manager, ssh_lab, tmp_path):
    known = tmp_path / "known_hosts"
    ssh_lab.write_known_hosts(str(known), wrong_key_for=["server01"])
    manager = make_manager(ssh_config=variant_config(ssh_lab, tmp_path, known_hosts=str(known)))
    for accept in (False, True):
        with pytest.raises(HostKeyError, match="HAS CHANGED") as caught:
            manager.start("1", host="server01", accept_new_host=accept)
        assert caught.value.changed is True
    assert manager.list() == []


def test_a_host_through_a_jump_host_checks_both_keys(make_manager, ssh_lab, tmp_path):
    known = tmp_path / "known_hosts"
    ssh_lab.write_known_hosts(str(known), hosts=["behind1"])  # the jump host nshost1 is unknown
    manager = make_manager(ssh_config=variant_config(ssh_lab, tmp_path, known_hosts=str(known)))
    with pytest.raises(HostKeyError, match="unknown host key"):
        manager.start("1", host="behind1")


# -- bad input and faults: one clear error, nothing created --------------------------------
def test_bad_hosts_are_clear_errors(remote, ssh_lab, tmp_path):
    cases = [
        ("127.0.0.1:1", "refused the connection"),
        ("no-such-host.invalid", "cannot resolve"),
        ("server01:99999", "is not a port number"),
    ]
    for host, message in cases:
        with pytest.raises(HostError, match=message):
            remote.start("1", host=host)
    with pytest.raises(HostError, match="no host could be used"):
        remote.start("1", host="127.0.0.1:1,127.0.0.1:2")
    assert remote.list() == []
    parent = remote.start("1", host="server01,nshost1")
    assert (parent.id, [c.id for c in parent.children]) == (1, [2, 3])  # nothing was used up before
    parent.result(timeout=60)


def test_authentication_failure_names_the_keys_tried(make_manager, ssh_lab, tmp_path):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    manager = make_manager(ssh_config=variant_config(ssh_lab, tmp_path, identity=str(key)))
    with pytest.raises(AuthenticationError, match=f"refused every key tried.*{key}"):
        manager.start("1", host="server01")
    assert manager.list() == []


def test_python_missing_or_too_old(remote, ssh_lab, tmp_path):
    with pytest.raises(HostError, match="no /nonexistent/python3 there.*--python"):
        remote.start("1", host="server01", python="/nonexistent/python3")
    old = Path(ssh_lab.scratch) / "python3.8"
    old.write_text(
        "#!/bin/sh\necho '{\"version\": [3, 8, 10], \"dill\": false, \"root\": \"/tmp\", \"uid\": 0,"
        " \"root_uid\": null, \"root_mode\": null, \"root_link\": false}'\n"
    )
    old.chmod(0o755)
    with pytest.raises(HostError, match="Python 3.8.10; jobs need 3.9 or newer"):
        remote.start("1", host="server01", python=str(old))
    assert remote.list() == []


@pytest.mark.parametrize("program", ["true", "echo"])
def test_python_naming_a_program_that_is_not_python_is_refused(remote, program):
    """Issue 14, defect 10: `true` gave an IndexError, `echo` "Expecting value"."""
    with pytest.raises(HostError, match=f"{program} there is not a Python that runs jobs.*--python PATH"):
        remote.start("1", host="server01", python=program)
    assert remote.list() == []


def test_a_spool_directory_that_is_not_private_is_refused(remote, ssh_lab):
    root = spool_root(ssh_lab)
    remote.start("1", host="server01").result(timeout=30)  # make sure it exists
    remote.shutdown()
    root.chmod(0o755)
    try:
        from jupyter_rjobs import JobManager

        with JobManager(ssh_config=ssh_lab.ssh_config) as fresh:
            with pytest.raises(HostError, match="is not private.*chmod 700"):
                fresh.start("1", host="server01")
            assert fresh.list() == []
    finally:
        root.chmod(0o700)


def test_a_full_disk_on_the_host_fails_the_job_saying_so(remote, ssh_lab):
    jobs_dir = spool_root(ssh_lab) / "jobs"
    remote.start("1", host="server01").result(timeout=30)  # the agent is installed before the disk fills
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=64k,mode=0700,uid={ssh_lab.uid}", "rjobs-full", str(jobs_dir)], check=True
    )
    try:
        ssh_lab.run_as_user(["sh", "-c", f"cat /dev/zero > {jobs_dir}/filler"])
        job = remote.start("1", host="server01")
        with pytest.raises(JobError, match="no space left on the host's disk"):
            job.result(timeout=30)
        assert job.state is JobState.Failed
        assert wait_until(lambda: not spool_of(ssh_lab, job).exists(), timeout=10)  # nothing half-made stays
    finally:
        subprocess.run(["umount", str(jobs_dir)], check=True)


def test_a_disk_that_fills_during_a_job_fails_it_saying_so_and_keeps_what_it_wrote(remote, ssh_lab):
    """Issue 14, defect 9: it said "WorkerDied: worker exited with exit code 0" after 3,692 of 10,000 lines."""
    jobs_dir = spool_root(ssh_lab) / "jobs"
    remote.start("1", host="server01").result(timeout=30)  # the agent is installed before the disk fills
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=256k,mode=0700,uid={ssh_lab.uid}", "rjobs-full", str(jobs_dir)], check=True
    )
    try:
        job = remote.start("for i in range(10_000):\n    print(f'{i:05d}', 'x' * 100, flush=True)", host="server01")
        with pytest.raises(JobError, match="no space left on the host's disk"):
            job.result(timeout=60)
        assert job.state is JobState.Failed and job.error.ename == "HostDiskFull"
        lines = [line.split()[0] for r in remote.receive(job) if r.kind is RecordKind.STDOUT for line in r.data.splitlines()]
        assert 0 < len(lines) < 10_000
        assert lines == [f"{i:05d}" for i in range(len(lines))]  # what it wrote before is kept, in order, whole
        print(f"{len(lines)} of 10000 lines kept before the disk was full")
        remote.remove(job)
        assert wait_until(lambda: not spool_of(ssh_lab, job).exists(), timeout=10)
    finally:
        subprocess.run(["umount", str(jobs_dir)], check=True)


def test_a_killed_remote_worker_fails_the_job_naming_the_signal(remote):
    job = remote.start("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(600)", host="server01")
    pid = int(next(r for r in remote.follow(job, keep=True) if r.kind is RecordKind.STDOUT).data)
    os.kill(pid, signal.SIGKILL)  # the hosts are this machine's processes: kill it "there"
    with pytest.raises(JobError, match="worker exited with signal 9"):
        job.result(timeout=30)


# -- nothing left behind on the host ------------------------------------------------------
def test_stop_leaves_nothing_running_on_the_host(remote, ssh_lab):
    job = remote.start(
        "import subprocess, time\nsubprocess.Popen(['sleep', '600'])\n"
        "subprocess.Popen(['sleep', '601'], start_new_session=True)\nprint('started', flush=True)\n" + LOOP_FOREVER,
        host="server01",
    )
    next(r for r in remote.follow(job, keep=True) if r.kind is RecordKind.STDOUT)
    assert any("sleep 601" in cmd for _, cmd in job_processes(ssh_lab))
    remote.stop(job)
    assert job.state is JobState.Stopped
    assert wait_until(lambda: job_processes(ssh_lab) == [], timeout=10), job_processes(ssh_lab)


def test_shutdown_leaves_no_remote_process_and_no_spool(make_manager, ssh_lab):
    manager = make_manager(ssh_config=ssh_lab.ssh_config)
    running = manager.start(LOOP_FOREVER, host="nshost1,server01")
    kept = manager.start("'kept'", host="server01", cache="remote")
    kept.result(timeout=30)
    assert wait_until(lambda: running.state is JobState.Running, timeout=30)
    spools = [spool_of(ssh_lab, j) for j in (*running.children, kept)]
    manager.shutdown()
    assert running.state is JobState.Stopped
    assert wait_until(lambda: ssh_lab.user_processes() == [], timeout=10), ssh_lab.user_processes()
    assert not any(s.exists() for s in spools)


def test_the_agent_is_private_versioned_and_brings_dill(remote, ssh_lab):
    remote.start("1", host="server01").result(timeout=30)
    root = spool_root(ssh_lab)
    agents = list(root.glob("agent-*"))
    assert agents and all(oct(a.stat().st_mode & 0o777) == "0o700" for a in agents)
    from jupyter_rjobs.backends.remote.agent_files import AGENT_DIGEST

    current = root / f"agent-1-{AGENT_DIGEST}"
    assert (current / "rjobs_agent.zip").exists() and (current / "dill.zip").exists()  # the host has no dill
    assert oct((current / "rjobs_agent.zip").stat().st_mode & 0o777) == "0o600"


# -- the magics ---------------------------------------------------------------------------
@pytest.fixture
def ip_remote(ip, ssh_lab):
    manager = get_manager(ip)
    previous = manager.ssh_config
    manager.ssh_config = ssh_lab.ssh_config
    yield ip
    manager.ssh_config = previous


def test_magics_fan_out_and_receive_per_host(ip_remote):
    ip = ip_remote
    ip.user_ns["factor"] = 3
    parent = ip.run_cell_magic("rjob", "start --host nshost1,nshost2 --name survey", "print('hi')\nfactor * 2")
    assert [c.location for c in parent.children] == ["nshost1", "nshost2"]
    ip.run_line_magic("rjob", "wait survey --timeout 60")
    with capture_output() as out:
        one = ip.run_line_magic("rjob", "receive survey --host nshost2")
    assert one == 6 and "hi" in out.stdout
    with capture_output() as out:
        values = ip.run_line_magic("rjob", "receive survey")
    assert values == {"nshost1": 6}
    assert "on nshost1" in out.stdout
    assert "survey:nshost1" in str(ip.run_line_magic("rjob", "show survey"))


def test_magics_remote_bad_input(ip_remote):
    ip = ip_remote
    with pytest.raises(UsageError, match="refused the connection"):
        ip.run_line_magic("rjob", "start --host 127.0.0.1:1 -- 1")
    with pytest.raises(UsageError, match="leave out --thread"):
        ip.run_line_magic("rjob", "start --thread --host server01 -- 1")
    with pytest.raises(UsageError, match="are for jobs under the agent: add --host"):
        ip.run_line_magic("rjob", "start --cache remote -- 1")
    with pytest.raises(UsageError, match="named twice"):
        ip.run_line_magic("rjob", "start --host server01,server01 -- 1")
    assert get_manager(ip).list() == []


def test_progress_from_a_remote_job_reaches_the_kernel(remote):
    job = remote.start("from jupyter_rjobs import progress\nfor i in range(5):\n    progress(i + 1, 5, 'step')", host="server01")
    job.result(timeout=30)
    assert job.progress is not None and job.progress["current"] == 5 and job.progress["total"] == 5
    assert [r.kind for r in remote.receive(job)].count(RecordKind.PROGRESS) == 5


def test_what_a_remote_job_leaves_running_ends_with_it_and_its_output_stays_its(remote, ssh_lab):
    job = remote.start(
        leaves_a_printing_child(before="subprocess.Popen(['sleep', '600'])\n", value="'done'"),
        host="server01",
    )
    assert job.result(timeout=60) == "done"
    records = remote.receive(job)
    stdout = "".join(r.data for r in records if r.kind is RecordKind.STDOUT)
    stderr = "".join(r.data for r in records if r.kind is RecordKind.STDERR)
    assert stdout.startswith("leak1\n") and "leak8" not in stdout, stdout
    assert "(sleep)" in stderr and "(sh)" in stderr and "this job left running" in stderr, stderr
    assert wait_until(lambda: job_processes(ssh_lab) == [], timeout=10), job_processes(ssh_lab)
