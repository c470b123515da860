"""Local jobs and sessions that survive the kernel: ``--detached`` without ``--host`` and sessions on
``localhost`` run under the same agent, server and spool as remote hosts, reached through a local
pipe (no SSH). Real kernels (jupyter_client) for the SIGKILL story; the plain manager for the
transport, the security checks and bad input."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import pid_alive, wait_until  # noqa: E402
from kernel_helpers import KernelSession, errors, stream_text  # noqa: E402

from jupyter_rjobs import HostError, JobManager, JobState, UsageProblem  # noqa: E402
from jupyter_rjobs.backends.remote.transport import LocalTransport, is_local_host  # noqa: E402



def spools(root: str) -> list[str]:
    """The job spools in the local agent's root, but those a server made ready for new jobs (test_warm_pairs.py)."""
    return [name for name in os.listdir(os.path.join(root, "jobs")) if not name.startswith(".removed-free-")]

def agent_processes(root: str) -> list[int]:
    """This user's local agent processes under ``root``: the server, its supervisors, job processes and
    session interpreters are all forks of one ``python -c`` whose command line names the root."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if root.encode() in f.read() and pid_alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def read_pid(path: str) -> int:
    assert wait_until(lambda: os.path.exists(path) and open(path).read().strip().isdigit(), 30), f"nothing wrote {path}"
    return int(open(path).read())


# -- through real kernels ---------------------------------------------------------------
@pytest.mark.kernel
def test_a_local_detached_job_and_session_outlive_a_killed_kernel(local_home, tmp_path):
    root = os.path.join(local_home, ".cache", "jupyter_rjobs")
    gate, job_pid_file = str(tmp_path / "gate"), str(tmp_path / "job.pid")
    first = KernelSession()
    try:
        first.run("%load_ext jupyter_rjobs")
        first.run(
            "%%rjob start --detached --name survivor\n"
            f"import os, time\nopen({job_pid_file!r}, 'w').write(str(os.getpid()))\n"
            f"for i in range(40):\n    while i == 20 and not os.path.exists({gate!r}):\n        time.sleep(0.02)\n"
            "    print(i, flush=True)\n'all done'"
        )
        first.run("%rjob session new localhost --name s")
        first.run("%%rjob invoke --session s\nimport os\ntable = {i: i * i for i in range(100000)}\nsession_pid = os.getpid()")
        session_pid = first.value("get_ipython().run_line_magic('rjob', 'invoke --session s -- session_pid')")
        server_pid = first.value("__import__('jupyter_rjobs.ipython.extension', fromlist=['x']).get_manager().backend('remote').connection('localhost').server_pid")
        seen = ""
        deadline = time.monotonic() + 60
        while len(seen.split()) < 20:  # the first half (the job waits for the gate after it)
            assert time.monotonic() < deadline, f"only {seen!r} arrived"
            seen += stream_text(first.run("%rjob receive survivor\nimport time; time.sleep(0.05)"))  # a poll interval
        assert [int(n) for n in seen.split()] == list(range(20))
        first.run("%rjob disconnect s")
        os.kill(first.kernel_pid, signal.SIGKILL)
        assert first.process.wait(5) == -signal.SIGKILL
    finally:
        first.close()
    job_pid = read_pid(job_pid_file)
    assert wait_until(lambda: not pid_alive(server_pid), 30), "the local agent's server did not notice its kernel was gone"
    assert pid_alive(job_pid) and pid_alive(session_pid), "the detached job or the disconnected session died with the kernel"
    open(gate, "w").close()  # the second half runs while no kernel follows the job

    second = KernelSession()
    try:
        second.run("%load_ext jupyter_rjobs")
        listing = stream_text(second.run("print(get_ipython().run_line_magic('rjob', 'list --all'))"))
        assert "survivor" in listing and "localhost" in listing, listing
        second.run("%rjob connect s")  # the registry says where s is: adopted with its variables
        assert second.value("get_ipython().run_line_magic('rjob', 'invoke --session s -- [len(table), table[7], session_pid]')") == [100000, 49, session_pid]
        adopted = second.run("%rjob connect localhost")
        assert "survivor" in "".join(o.text for o in adopted)
        outputs = second.run("%rjob receive survivor --wait", timeout=60)
        assert not errors(outputs), "".join(o.text for o in outputs)
        rest = stream_text(outputs)
        assert [int(n) for n in (seen + rest).split()] == list(range(40)), (seen, rest)  # every record exactly once, in order
        assert second.value("get_ipython().run_line_magic('rjob', 'receive survivor')") is None  # all was received
        assert second.value("__import__('jupyter_rjobs.ipython.extension', fromlist=['x']).get_manager().get('survivor').result()") == "all done"
        entered = second.run("%rjob enter s")
        assert "Cells now run in session s" in stream_text(entered)
        assert "12345" in "".join(o.text for o in second.run("table[111] + 24")), "a cell in the entered session"
        second.run("%rjob exit")
        assert second.value("'table' in globals()") is False  # the kernel's own namespace never had it
        second.run("%rjob remove survivor")
        second.run("%rjob session close s")
        assert wait_until(lambda: not pid_alive(session_pid) and not pid_alive(job_pid), 30)
        server = second.value("__import__('jupyter_rjobs.ipython.extension', fromlist=['x']).get_manager().backend('remote').connection('localhost').server_pid")
        # only this kernel's agent server and its spare pair (3 processes), ended with the kernel below; the removed
        # job's supervisor and the session's may take a moment to go after their processes
        assert wait_until(lambda: len(agent_processes(root)) <= 3, 30), agent_processes(root)
        assert server in agent_processes(root), agent_processes(root)
        # no spool left, but those made ready for new jobs while the server runs (test_warm_pairs.py)
        assert wait_until(lambda: not spools(root), 30)
        assert not os.listdir(os.path.join(root, "sessions"))
    finally:
        second.shutdown()
        second.close()
    assert wait_until(lambda: not agent_processes(root), 30), f"left running: {agent_processes(root)}"
    assert wait_until(lambda: not os.listdir(os.path.join(root, "jobs")), 30), os.listdir(os.path.join(root, "jobs"))


@pytest.mark.kernel
def test_jupyters_restart_that_kills_the_kernels_process_group_spares_local_detached_work(local_home, tmp_path):
    """Restart Kernel (jupyter_client's restart_kernel(now=True)) SIGKILLs the kernel's whole process
    group: the local agent, in a session of its own, is not in it."""
    root = os.path.join(local_home, ".cache", "jupyter_rjobs")
    gate, pid_file = str(tmp_path / "gate"), str(tmp_path / "plain.pid")
    kernel = KernelSession()
    try:
        kernel.run("%load_ext jupyter_rjobs")
        kernel.run(
            "%%rjob start --detached --name survivor\n"
            f"import os, time\nwhile not os.path.exists({gate!r}):\n    time.sleep(0.02)\nfor i in range(10):\n    print(i, flush=True)\n'done'"
        )
        kernel.run("%rjob session new localhost --name s")
        kernel.run("%%rjob invoke --session s\nkept = 'alive'")
        kernel.run("%rjob disconnect s")
        kernel.run("%rjob session new localhost --name t")  # not disconnected: it ends with its kernel
        doomed = [kernel.value("get_ipython().run_line_magic('rjob', 'invoke --session t -- __import__(\"os\").getpid()')")]
        kernel.run(f"%%rjob start --host localhost --name plain\nimport os, time\nopen({pid_file!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)")
        doomed.append(read_pid(pid_file))
        old_pid = kernel.kernel_pid
        kernel.km.restart_kernel(now=True)
        kernel.client.wait_for_ready(timeout=60)
        assert kernel.km.provisioner.process.pid != old_pid
        # the agent's server was not in the killed group: it saw its pipe end and ended the non-detached work
        assert wait_until(lambda: not any(pid_alive(pid) for pid in doomed), 30), [pid for pid in doomed if pid_alive(pid)]
        open(gate, "w").close()
        kernel.run("%load_ext jupyter_rjobs")
        kernel.run("%rjob connect s")
        assert kernel.value("get_ipython().run_line_magic('rjob', 'invoke --session s -- kept')") == "alive"
        kernel.run("%rjob connect localhost")
        outputs = kernel.run("%rjob receive survivor --wait", timeout=60)
        assert [int(n) for n in stream_text(outputs).split()] == list(range(10))
        kernel.run("%rjob remove survivor plain")  # plain: adopted Stopped (its spool says how it ended)
        kernel.run("%rjob session close s")
        assert wait_until(lambda: not spools(root), 30)  # removed spools are deleted (or made ready) at a quiet moment
    finally:
        kernel.shutdown()
        kernel.close()
    assert wait_until(lambda: not agent_processes(root), 30), f"left running: {agent_processes(root)}"


# -- the plain manager ------------------------------------------------------------------
def test_the_local_transport_runs_commands_and_pipes(local_home):
    transport = LocalTransport().open()
    status, out, err = transport.run("cat; echo oops >&2; exit 3", stdin=b"piped")
    assert (status, out, err) == (3, b"piped", b"oops\n")
    channel = transport.exec("read line; echo got $line; echo said >&2; cat > /dev/null")
    channel.sendall(b"hello\n")
    assert wait_until(lambda: channel.recv_stderr_ready(), 10)
    assert channel.recv(100) == b"got hello\n"
    assert channel.recv_stderr(100) == b"said\n"
    assert os.getsid(channel.process.pid) == channel.process.pid  # a session of its own: a kernel's killpg never reaches it
    channel.shutdown_write()  # it sees its stdin end, as the agent's server does when its kernel goes
    assert channel.recv(100) == b""
    assert channel.process.wait(10) == 0
    transport.close()
    assert not transport.alive
    assert is_local_host("localhost") and not is_local_host("127.0.0.1") and not is_local_host("me@localhost")


def test_a_detached_job_without_host_runs_on_the_local_agent(local_home, make_manager):
    manager = make_manager()
    job = manager.start("import os\nprint('here', flush=True)\nos.getpid()", detached=True, name="d")
    assert job.location == "localhost" and job.detached and str(job.kind) == "RemoteJob"
    assert job.result(timeout=60) != os.getpid()
    assert [r.data for r in manager.receive(job) if str(r.kind) == "stdout"] == ["here\n"]
    root = os.path.join(local_home, ".cache", "jupyter_rjobs")
    for path in (root, os.path.join(root, "jobs")):
        assert os.stat(path).st_mode & 0o777 == 0o700, path  # nothing readable by other users
    spool = os.path.join(root, "jobs", str(job.instance_id))
    assert all(os.stat(os.path.join(spool, f)).st_mode & 0o077 == 0 for f in os.listdir(spool))
    manager.remove(job)
    assert wait_until(lambda: not os.path.exists(spool), 30)


def test_many_jobs_started_at_once_while_earlier_ones_end_all_run(local_home, make_manager):
    """Starting jobs as fast as they go fills the host's input while its earlier jobs end and
    their output and ends come back. The kernel's reading thread cleans each ended job: it used to
    wait to send while the main thread waited for the host to read, and the host waited for us
    to read (a deadlock, the starts hung for good). Any transport has it; localhost shows it."""
    manager = make_manager()
    started: list = []

    def start_all() -> None:
        for i in range(500):
            started.append(manager.start(f"print('line', {i}, 'x' * 4000, flush=True)\n{i}", host="localhost"))

    import threading

    starter = threading.Thread(target=start_all, daemon=True)
    starter.start()
    starter.join(120)
    assert not starter.is_alive(), f"starting hung after {len(started)} of 500 jobs"
    assert [job.result(timeout=120) for job in started] == list(range(500))
    assert all(manager.receive(job)[0].data == f"line {i} {'x' * 4000}\n" for i, job in enumerate(started))


def test_a_spool_root_others_can_read_is_refused_before_anything_is_loaded(local_home, make_manager):
    root = os.path.join(local_home, ".cache", "jupyter_rjobs")
    os.makedirs(root, mode=0o700)
    os.chmod(root, 0o755)
    with pytest.raises(HostError, match=r"localhost: the spool directory .* is not private .*chmod 700"):
        make_manager().start("1", detached=True)
    assert os.listdir(root) == []  # nothing was installed or started there


def test_a_non_detached_job_on_localhost_ends_with_its_kernel(local_home, tmp_path):
    """The local agent notices its kernel is gone as a host's notices a dropped channel: its
    non-detached work ends, the detached goes on."""
    import subprocess

    root = os.path.join(local_home, ".cache", "jupyter_rjobs")
    kept, ended = str(tmp_path / "kept.pid"), str(tmp_path / "ended.pid")
    loop = "import os, time\nopen({!r}, 'w').write(str(os.getpid()))\nwhile True:\n    time.sleep(0.05)"
    # the doomed job prints without pause: the agent may find its kernel gone by a broken pipe first
    noisy = "import os\nopen({!r}, 'w').write(str(os.getpid()))\nwhile True:\n    print('x' * 100, flush=True)"
    script = (
        "import os, sys, time\nfrom jupyter_rjobs import JobManager\nm = JobManager()\n"
        f"m.start({loop.format(kept)!r}, detached=True)\nm.start({noisy.format(ended)!r}, host='localhost')\n"
        "m.new_session('localhost', name='t')\nprint('started', flush=True)\ntime.sleep(600)"
    )
    kernel = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert kernel.stdout is not None and kernel.stdout.readline() == b"started\n"
        kept_pid, ended_pid = read_pid(kept), read_pid(ended)
        kernel.kill()
        kernel.wait(10)
        assert wait_until(lambda: not pid_alive(ended_pid), 30), "the kernel's non-detached local job outlived it"
        assert pid_alive(kept_pid), "the detached job ended with its kernel"
        manager = JobManager()
        try:
            with pytest.raises(UsageProblem, match=r"session 't' is gone from localhost \(closed, or its interpreter ended\)"):
                manager.connect("t")  # not disconnected: it ended with its kernel
            jobs = {job.detached: job for job in manager.connect("localhost")}
            assert sorted(jobs) == [False, True]
            assert wait_until(lambda: jobs[False].state is JobState.Stopped, 30), jobs[False]  # its spool says how it ended
            assert jobs[True].state is JobState.Running
            manager.stop(jobs[True])
            assert wait_until(lambda: jobs[True].state is JobState.Stopped, 30), jobs[True]
            manager.remove(list(jobs.values()))
            assert wait_until(lambda: not spools(root), 30)
        finally:
            manager.shutdown()
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait(10)
    assert wait_until(lambda: not agent_processes(root), 30), f"left running: {agent_processes(root)}"


def test_host_show_localhost_says_it_is_the_local_agent(ip, capsys):
    ip.run_line_magic("rjob", "host show localhost")
    out = capsys.readouterr().out
    assert "local agent" in out and "no SSH" in out and sys.executable in out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cache": "remote"}, r"--cache, --python and --accept-new-host are for jobs under the agent: add --host HOST \(--host localhost"),
        ({"detached": True, "accept_new_host": True}, r"--accept-new-host is for SSH hosts; a detached job on this machine needs no host key"),
    ],
)
def test_bad_input_for_local_jobs_is_one_line(local_home, make_manager, options, message):
    with pytest.raises(UsageProblem, match=message):
        make_manager().start("1", kind="remote", **options)
    assert not os.path.exists(os.path.join(local_home, ".cache", "jupyter_rjobs"))  # nothing half-created
