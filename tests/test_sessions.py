"""Sessions (lasting interpreters on a host), invoke, enter/exit, on the real-sshd lab."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import leaves_a_printing_child, wait_until
from IPython.core.error import UsageError

from jupyter_rjobs import JobError, JobState, RecordKind, SessionState
from jupyter_rjobs.ipython.extension import get_manager

pytestmark = pytest.mark.ssh


@pytest.fixture
def remote(make_manager, ssh_lab):
    return make_manager(ssh_config=ssh_lab.ssh_config)


def test_a_session_keeps_its_variables_between_invokes(remote):
    session = remote.new_session("server01", name="s1")
    assert session.state is SessionState.Opened and str(session.availability) == "Available"
    assert remote.invoke("import os\nx = list(range(10))\nos.getpid()", session="s1") != os.getpid()
    assert remote.invoke("sum(x)", session="s1") == 45
    pid_a = remote.invoke("os.getpid()", session=session)
    assert remote.invoke("os.getpid()", session=session) == pid_a  # one interpreter
    assert remote.list() == []  # invoke leaves no job behind


def test_invoke_shows_output_live_and_raises_the_remote_error(remote):
    remote.new_session("server01", name="s1")
    seen = []
    assert remote.invoke("print('hello')\n7", session="s1", on_record=lambda job, r: seen.append((r.kind, r.data))) == 7
    assert (RecordKind.STDOUT, "hello\n") in seen
    with pytest.raises(JobError) as info:
        remote.invoke("def f():\n    raise KeyError('deep')\nf()", session="s1")
    assert info.value.ename == "KeyError" and "f()" in info.value.traceback_text
    assert remote.invoke("1 + 1", session="s1") == 2  # an error does not break the session


def test_invoke_on_several_hosts_returns_a_value_per_host(remote):
    assert remote.invoke("import socket\n6 * 7", host="server01,nshost1") == {"server01": 42, "nshost1": 42}


def test_a_background_job_in_a_session_makes_it_busy_and_sees_its_variables(remote):
    remote.new_session("server01", name="s1")
    remote.invoke("import time\ntotal = 5", session="s1")
    job = remote.start("time.sleep(1.5)\ntotal * 2", session="s1", cache="remote", name="long")
    assert wait_until(lambda: job.state is JobState.Running, timeout=30)
    session = remote.get_session("s1")
    assert str(session.availability) == "Busy"
    with pytest.raises(Exception, match="busy with job"):
        remote.invoke("1", session="s1")
    assert job.result(timeout=30) is None  # cache=remote: the value stays on the host until received
    assert [r.data for r in remote.receive(job) if r.kind is RecordKind.VALUE] == [10]
    assert str(session.availability) == "Available"


def test_stopping_a_session_job_interrupts_it_and_keeps_the_session(remote):
    remote.new_session("server01", name="s1")
    remote.invoke("kept = 'still here'", session="s1")
    job = remote.start("import time\nwhile True:\n    time.sleep(0.05)", session="s1")
    assert wait_until(lambda: job.state is JobState.Running, timeout=30)
    remote.stop(job)
    assert job.state is JobState.Stopped
    assert remote.invoke("kept", session="s1") == "still here"


def test_a_session_whose_interpreter_died_is_broken_saying_its_variables_are_gone(remote):
    session = remote.new_session("server01", name="s1")
    pid = remote.invoke("import os\nos.getpid()", session="s1")
    job = remote.start("import time\ntime.sleep(600)", session="s1")
    assert wait_until(lambda: job.state is JobState.Running, timeout=30)
    os.kill(pid, signal.SIGKILL)  # the lab's hosts are this machine's processes
    assert wait_until(lambda: job.state.finished, timeout=10)
    assert job.state is JobState.Failed and "SIGKILL" in str(job.error)
    assert session.state is SessionState.Broken and "variables are gone" in session.reason
    with pytest.raises(Exception, match="broken"):
        remote.invoke("1", session="s1")
    remote.close_session("s1")
    assert remote.sessions() == []


def test_closing_a_session_ends_its_interpreter(remote, ssh_lab):
    remote.new_session("server01", name="s1")
    pid = remote.invoke("import os\nos.getpid()", session="s1")
    remote.close_session("s1")
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z", timeout=10)
    with pytest.raises(Exception, match="no session"):
        remote.get_session("s1")


def test_disconnected_session_jobs_go_on_and_connect_receives_everything(remote):
    remote.new_session("server01", name="s1")
    job = remote.start("import time\nfor i in range(20):\n    print(i, flush=True)\n    time.sleep(0.05)\n'done'", session="s1")
    assert wait_until(lambda: job.state is JobState.Running, timeout=30)
    first = [r.data for r in remote.receive(job) if r.kind is RecordKind.STDOUT]
    remote.disconnect("s1")
    session = remote.get_session("s1")
    assert session.state is SessionState.Disconnected and job.state is JobState.Disconnected
    time.sleep(1.5)  # it finishes while nobody listens
    assert remote.connect("s1") == [job]
    assert job.result(timeout=30) == "done"
    rest = [r.data for r in remote.receive(job) if r.kind is RecordKind.STDOUT]
    assert "".join(first + rest).split() == [str(i) for i in range(20)]
    assert session.state is SessionState.Opened


# ---------------------------------------------------------------- the magics
@pytest.fixture
def ip_remote(ip, ssh_lab):
    get_manager(ip).ssh_config = ssh_lab.ssh_config
    return ip


def test_magics_session_invoke_enter_exit(ip_remote, capsys):
    ip = ip_remote
    ip.run_line_magic("rjob", "session new server01 --name s1")
    ip.run_cell_magic("rjob", "invoke --session s1", "import os\nx = list(range(10))")
    assert ip.run_cell_magic("rjob", "invoke --session s1", "sum(x)") == 45
    table = ip.run_line_magic("rjob", "session list")
    assert "s1" in str(table) and "Opened" in str(table) and "server01" in str(table)
    ip.run_line_magic("rjob", "enter s1")
    assert "[s1@server01]" in capsys.readouterr().out
    result = ip.run_cell("y = sum(x) + 1\nprint('remote pid', os.getpid())\ny")
    assert result.result == 46
    assert "y" not in ip.user_ns  # it ran in the session, not here
    ip.run_cell("%rjob exit")
    assert ip.run_cell("z = 3\nz").result == 3 and ip.user_ns["z"] == 3
    assert ip.run_cell_magic("rjob", "invoke --session s1", "y") == 46
    ip.run_line_magic("rjob", "session close s1")


def test_magics_session_bad_input_creates_nothing(ip_remote):
    ip = ip_remote
    manager = get_manager(ip)
    with pytest.raises(UsageError, match="name the host"):
        ip.run_line_magic("rjob", "session new")
    with pytest.raises(UsageError, match="no session"):
        ip.run_line_magic("rjob", "enter nope")
    with pytest.raises(UsageError, match="one of --session"):
        ip.run_cell_magic("rjob", "invoke", "1")
    with pytest.raises(UsageError, match="not both"):
        ip.run_cell_magic("rjob", "start --session s1 --host server01", "1")
    with pytest.raises(UsageError, match="add --host"):
        ip.run_cell_magic("rjob", "start --cache remote", "1")  # (--detached alone runs on this machine's local agent)
    assert manager.sessions() == [] and manager.list() == []


def test_a_session_disconnected_in_one_manager_is_connected_from_another(make_manager, ssh_lab_empty):
    first = make_manager(ssh_config=ssh_lab_empty.ssh_config)
    first.new_session("server01", name="s1")
    first.invoke("kept = 'from the first kernel'", session="s1")
    job = first.start("import time\nfor i in range(10):\n    print(i, flush=True)\n    time.sleep(0.05)\nkept", session="s1", name="in-s1")
    assert wait_until(lambda: job.state is JobState.Running, timeout=30)
    first.disconnect("s1")
    first.shutdown()  # the kernel exits: a disconnected session and its job go on

    second = make_manager(ssh_config=ssh_lab_empty.ssh_config)
    adopted = second.connect("server01")
    assert [j.name for j in adopted] == ["in-s1"]
    session = second.get_session("s1")
    assert session.state is SessionState.Opened and adopted[0].session is session
    assert adopted[0].result(timeout=30) == "from the first kernel"
    assert "".join(r.data for r in second.receive(adopted[0]) if r.kind is RecordKind.STDOUT).split() == [str(i) for i in range(10)]
    assert second.invoke("kept", session="s1") == "from the first kernel"  # its variables lived on
    second.close_session("s1")


def test_the_panel_lists_a_real_session_and_disconnects_and_connects_it(remote):
    import jupyter_rjobs

    session = remote.new_session("server01", name="s1")
    job = remote.start("import time\ntime.sleep(1)\n'slept'", session="s1", name="nap")
    panel = jupyter_rjobs.panel(remote, interval=0.05)
    try:
        assert wait_until(lambda: len(panel._session_rows) == 1 and "s1" in panel._session_rows[0].label.value, timeout=10)
        row = panel._session_rows[0]
        row.disconnect.click()
        assert wait_until(lambda: session.state is SessionState.Disconnected and "Disconnected" in row.label.value, timeout=10), row.label.value
        assert job.state is JobState.Disconnected
        row.connect.click()
        assert wait_until(lambda: session.state is SessionState.Opened and "Opened" in row.label.value, timeout=10), row.label.value
        assert job.result(timeout=30) == "slept"
    finally:
        panel.close()


def test_a_child_a_session_job_leaves_running_lives_on_and_never_prints_into_the_next_job(remote):
    remote.new_session("server01", name="s1")
    first = remote.start(
        leaves_a_printing_child(),
        session="s1",
    )
    child = first.result(timeout=60)
    for _ in range(2):
        later = remote.start("import time\ntime.sleep(1.5)", session="s1")
        later.result(timeout=60)
        leaked = [r.data for r in remote.receive(later) if r.kind in (RecordKind.STDOUT, RecordKind.STDERR)]
        assert leaked == [], f"a later job of the session got another job's output: {leaked}"
    records = remote.receive(first)
    stdout = "".join(r.data for r in records if r.kind is RecordKind.STDOUT)
    stderr = "".join(r.data for r in records if r.kind is RecordKind.STDERR)
    assert stdout.startswith("leak1\n") and "leak8" not in stdout, stdout
    assert f"still run: pid {child} (sh)" in stderr and "what they print from now on is dropped" in stderr, stderr
    assert remote.invoke("child.wait(timeout=30)", session="s1") == 0  # a session's processes live on, like its variables


def test_a_thread_a_session_job_leaves_running_never_prints_into_the_next_job(remote):
    remote.new_session("server01", name="s1")
    first = remote.start(
        "import threading, time\n"
        "def chatter():\n"
        "    for i in range(30):\n"
        "        print('tleak', i, flush=True); time.sleep(0.1)\n"
        "threading.Thread(target=chatter, name='chatter').start()\n"
        "time.sleep(0.05)",
        session="s1",
    )
    first.result(timeout=60)
    later = remote.start("import time\ntime.sleep(1.5)\n'later'", session="s1")
    assert later.result(timeout=60) == "later"
    leaked = [r.data for r in remote.receive(later) if r.kind in (RecordKind.STDOUT, RecordKind.STDERR)]
    assert leaked == [], f"a later job of the session got another job's output: {leaked}"
    stderr = "".join(r.data for r in remote.receive(first) if r.kind is RecordKind.STDERR)
    assert "(chatter); what they print from now on is dropped" in stderr, stderr


def test_magics_session_new_takes_options_before_the_host(ip_remote):
    """Issue 14, defect 10: `session new --name x server01` did not parse."""
    ip = ip_remote
    ip.run_line_magic("rjob", "session new --name x server01")
    session = get_manager(ip).get_session("x")
    assert session.host == "server01" and session.state is SessionState.Opened
    ip.run_line_magic("rjob", "session close x")


def test_a_session_request_the_host_cannot_do_is_answered_at_once_naming_why(remote, ssh_lab):
    """A session request that failed on the host used to be answered with a FAILED frame that no
    waiter took: the kernel waited its full 60 s and then said the connection was lost."""
    from pathlib import Path

    from jupyter_rjobs.core.errors import HostError

    session = remote.new_session("server01", name="s1")
    sessions = Path(ssh_lab.home) / ".cache" / "jupyter_rjobs" / "sessions"
    folder = sessions / str(session.instance)
    os.chmod(folder, 0o500)  # the host cannot write the session's "closing" mark: the close fails there
    try:
        with pytest.raises(HostError, match=r"server01: the agent there could not do session_close: PermissionError"):
            remote.close_session("s1")
    finally:
        os.chmod(folder, 0o700)
    assert remote.invoke("1 + 1", session="s1") == 2  # nothing half-done: the session still serves
    remote.close_session("s1")
    assert wait_until(lambda: not folder.exists(), timeout=30)


def test_a_session_closed_right_after_it_opened_ends_nothing_else(remote, ssh_lab):
    """A close that reached the session's supervisor before it had forked the interpreter made it
    signal "the tree of process 0": every process of the user there (the agent's server, its SSH
    session, other work; for the local agent as root, the whole machine). The kernel then waited
    60 s for the close's answer, its connection gone. Now the interpreter is stopped once forked."""
    import subprocess

    bystander = subprocess.Popen(["runuser", "-u", ssh_lab.user, "--", "sleep", "600"])
    try:
        for i in range(25):
            remote.new_session("server01", name=f"quick{i}")
            remote.close_session(f"quick{i}")
        assert bystander.poll() is None, "a process of the same user there was signalled"
        assert remote.invoke("6 * 7", host="server01") == 42  # the connection and its server serve on
    finally:
        bystander.kill()
        bystander.wait()
